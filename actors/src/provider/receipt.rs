//! Delivery receipts: what the provider later says became of a message it accepted (Twilio's
//! status callback: `delivered`, `undelivered` with a carrier error 30003-30008, ...), and
//! the check that a callback really comes from Twilio.
//!
//! Twilio signs each callback in `X-Twilio-Signature`: base64 of HMAC-SHA1, keyed by the
//! account's auth token, over the full callback URL followed by every POST parameter's name
//! and value, in name order. [`twilio_signature_matches`] recomputes it and compares in
//! constant time.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The receipt a status callback carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The provider's id of the message (Twilio `MessageSid`).
    pub provider_message_id: String,
    /// Twilio's `MessageStatus`: `queued`, `sending`, `sent`, `delivered`, `undelivered`,
    /// `failed`, `read`, ...
    pub status: String,
    /// Twilio's `ErrorCode` (30003-30008 for carrier failures), when there is one.
    pub error_code: Option<i64>,
}

/// What the provider answered when asked for one message's current status (Twilio's
/// `FetchMessage`), for when no callback tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Its current status, shaped as a receipt.
    Known(Receipt),
    /// The provider has no message with that id.
    NotFound,
    /// This provider cannot be asked (the webhook, the simulation).
    Unsupported,
    /// No usable answer.
    Failed(String),
}

/// Why a callback is not a receipt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("no MessageSid")]
    NoSid,
    #[error("no MessageStatus")]
    NoStatus,
    #[error("MessageStatus {0:?} is not a status")]
    BadStatus(String),
}

/// The statuses a receipt can carry, each with its rank: a receipt never moves a message's
/// delivery status back (callbacks can arrive out of order: `delivered` before `sent`).
pub const STATUSES: [(&str, u8); 10] = [
    ("accepted", 0),
    ("scheduled", 0),
    ("queued", 0),
    ("sending", 1),
    ("sent", 2),
    ("delivered", 3),
    ("undelivered", 3),
    ("failed", 3),
    ("read", 4),
    ("canceled", 3),
];

/// The rank of `status` (see [`STATUSES`]); `None` for a word that is not one.
pub fn rank(status: &str) -> Option<u8> {
    STATUSES.iter().find(|(s, _)| *s == status).map(|(_, r)| *r)
}

/// The receipt in a status callback's form parameters. Pure.
pub fn parse_twilio_callback(params: &[(String, String)]) -> Result<Receipt, ReceiptError> {
    let get = |names: &[&str]| {
        names.iter().find_map(|n| {
            params
                .iter()
                .find(|(k, v)| k == n && !v.trim().is_empty())
                .map(|(_, v)| v.trim().to_string())
        })
    };
    let sid = get(&["MessageSid", "SmsSid"]).ok_or(ReceiptError::NoSid)?;
    let status = get(&["MessageStatus", "SmsStatus"]).ok_or(ReceiptError::NoStatus)?;
    if rank(&status).is_none() {
        return Err(ReceiptError::BadStatus(status));
    }
    let error_code = get(&["ErrorCode"]).and_then(|c| c.parse().ok());
    Ok(Receipt {
        provider_message_id: sid,
        status,
        error_code,
    })
}

fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Hmac<Sha1> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    mac
}

/// Twilio's signature of a request to `url` with form `params`, keyed by `auth_token`.
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// Whether `signature` (an `X-Twilio-Signature` header) is Twilio's for this request;
/// compared in constant time.
pub fn twilio_signature_matches(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    mac(auth_token, url, params).verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Twilio's documented example (its request-validation docs and SDK tests).
    #[test]
    fn signs_as_twilio_documents() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let p = params(&[
            ("To", "+18005551212"),
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
        ]);
        assert_eq!(
            twilio_signature("12345", url, &p),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert!(twilio_signature_matches(
            "12345",
            url,
            &p,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        for bad in [
            "RSOYDt4T1cUTdK1PDd93/VVr8B9=",
            "",
            "not base64!",
            "RSOYDt4T1cUTdK1PDd93",
        ] {
            assert!(!twilio_signature_matches("12345", url, &p, bad), "{bad:?}");
        }
        assert!(!twilio_signature_matches(
            "54321",
            url,
            &p,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!twilio_signature_matches(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &p,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn parses_status_callbacks() {
        let ok = parse_twilio_callback(&params(&[
            ("MessageSid", "SM1"),
            ("MessageStatus", "undelivered"),
            ("ErrorCode", "30003"),
            ("AccountSid", "AC1"),
        ]));
        assert_eq!(
            ok,
            Ok(Receipt {
                provider_message_id: "SM1".into(),
                status: "undelivered".into(),
                error_code: Some(30003),
            })
        );
        let legacy = parse_twilio_callback(&params(&[("SmsSid", "SM2"), ("SmsStatus", "sent")]));
        assert_eq!(legacy.map(|r| r.error_code), Ok(None));
        assert_eq!(
            parse_twilio_callback(&params(&[("MessageStatus", "sent")])),
            Err(ReceiptError::NoSid)
        );
        assert_eq!(
            parse_twilio_callback(&params(&[("MessageSid", "SM3")])),
            Err(ReceiptError::NoStatus)
        );
        assert_eq!(
            parse_twilio_callback(&params(&[
                ("MessageSid", "SM3"),
                ("MessageStatus", "exploded")
            ])),
            Err(ReceiptError::BadStatus("exploded".into()))
        );
    }

    #[test]
    fn ranks_never_go_back() {
        assert!(rank("delivered") > rank("sent"));
        assert!(rank("sent") > rank("queued"));
        assert_eq!(rank("undelivered"), rank("delivered"));
        assert_eq!(rank("nonsense"), None);
    }
}
