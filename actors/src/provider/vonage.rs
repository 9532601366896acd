//! Vonage's (Nexmo's) SMS API, as Vonage documents it and its SDKs speak it:
//!
//! ```text
//! POST {base_url}/sms/json
//! Content-Type: application/x-www-form-urlencoded
//! X-Correlation-Id: <the message's correlation id>
//!
//! api_key=…&api_secret=…&from=Acme&to=15551234567&text=hello&client-ref=<message id>[&type=unicode]
//! ```
//!
//! `to` is E.164 without its `+`; `type=unicode` goes with a text GSM-7 cannot carry. The
//! answer is `200` with one entry per SMS part:
//! `{"message-count":"1","messages":[{"to":"…","message-id":"…","status":"0",…}]}`, or
//! `{"status":"2","error-text":"Missing to param"}` in an entry for a refusal. Each part's
//! `status` is classified by [`classify_status`] (pure, table-tested): throttling and
//! platform errors are transient, a bad recipient or text is the message's own (permanent),
//! credentials, account, quota and sender problems are the provider's (they open the circuit
//! and do not spend the message's attempts). A message with at least one accepted part is
//! sent (a part was delivered to Vonage: sending again would repeat it).
//!
//! Vonage's SMS API has no way to look a message up by its `client-ref`: reconciliation and
//! `FetchMessage`-style reads answer `Unsupported`.

use std::time::Duration;

use reqwest::Url;
use reqwest::header::ACCEPT;
use serde::{Deserialize, Serialize};

use super::{
    CORRELATION_HEADER, ProviderError, Secret, SendOutcome, error_chain, error_outcome,
    header_text, http_client, redact_url, redacted, transport_outcome,
};
use crate::message::{OutboundMessage, SmsEncoding, sms_segments};

/// `[provider.vonage]` (or a chain entry's). `Debug` redacts `api_secret`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VonageConfig {
    /// Base URL, without a path: `https://rest.nexmo.com`, or a Vonage-compatible service.
    pub base_url: String,
    /// The account's API key.
    pub api_key: String,
    /// The account's API secret. Secret: never logged, redacted in `Debug`.
    pub api_secret: String,
    /// Sender id or number for messages that do not name their own (required).
    pub from: String,
}

impl Default for VonageConfig {
    fn default() -> Self {
        VonageConfig {
            base_url: "https://rest.nexmo.com".into(),
            api_key: String::new(),
            api_secret: String::new(),
            from: String::new(),
        }
    }
}

impl std::fmt::Debug for VonageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VonageConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .field("api_secret", &redacted(&self.api_secret))
            .field("from", &self.from)
            .finish()
    }
}

/// One part of an answer.
#[derive(Debug, Clone, Default, Deserialize)]
struct Part {
    #[serde(default)]
    status: Option<String>,
    #[serde(rename = "message-id", default)]
    message_id: Option<String>,
    #[serde(rename = "error-text", default)]
    error_text: Option<String>,
}

/// The answer to a send.
#[derive(Debug, Clone, Default, Deserialize)]
struct Answer {
    #[serde(default)]
    messages: Vec<Part>,
}

/// What a part's `status` means for the message (`detail`: Vonage's `error-text`). Pure.
///
/// | status | meaning | outcome |
/// |---|---|---|
/// | 0 | success | sent |
/// | 1 throttled, 5 internal error, 10 too many binds | may pass | transient |
/// | 2 missing params, 3 invalid params, 6 invalid message, 7 number barred, 12 too long, 22 invalid network, 29 not whitelisted, 33 number deactivated | the message's own | permanent |
/// | 4 invalid credentials, 8 account barred, 9 no credit, 11 no HTTP, 14 signature, 15 invalid sender, 23 callback, 32 signature + secret | the account's | provider fault |
/// | anything else | unknown | transient |
pub fn classify_status(status: i64, detail: &str) -> Option<SendOutcome> {
    let detail = format!("vonage status {status}: {detail}");
    Some(match status {
        0 => return None,
        1 => SendOutcome::Transient {
            class: "rate_limited",
            detail,
        },
        5 | 10 => SendOutcome::Transient {
            class: "server_error",
            detail,
        },
        2 | 3 | 6 | 7 | 12 | 22 | 29 | 33 => SendOutcome::Permanent {
            code: Some(status),
            detail,
        },
        4 | 8 | 9 | 11 | 14 | 15 | 23 | 32 => SendOutcome::ProviderFault {
            // Not an HTTP status: Vonage answers 200 with the refusal inside.
            status: 200,
            detail,
        },
        _ => SendOutcome::Transient {
            class: "unexpected_status",
            detail,
        },
    })
}

/// The outcome of a `200` answer's body. Pure.
fn outcome_of(body: &[u8], msg: &OutboundMessage) -> SendOutcome {
    let answer: Answer = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => {
            return SendOutcome::Ambiguous {
                detail: format!("vonage answered 200 with an unreadable body: {e}"),
            };
        }
    };
    let status = |p: &Part| {
        p.status
            .as_deref()
            .and_then(|s| s.trim().parse::<i64>().ok())
    };
    if let Some(sent) = answer.messages.iter().find(|p| status(p) == Some(0)) {
        let refused = answer
            .messages
            .iter()
            .filter(|p| status(p) != Some(0))
            .count();
        if refused > 0 {
            tracing::warn!(
                message_id = %msg.id,
                correlation_id = %msg.correlation_id,
                refused,
                "vonage accepted some parts of the message and refused others; recorded sent \
                 (sending again would repeat the accepted parts)"
            );
        }
        return SendOutcome::Sent {
            provider_message_id: sent
                .message_id
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| msg.id.to_string()),
        };
    }
    match answer.messages.first() {
        Some(p) => match status(p) {
            Some(s) => classify_status(s, p.error_text.as_deref().unwrap_or("")).unwrap_or(
                SendOutcome::Ambiguous {
                    detail: "vonage status 0 without a message".into(),
                },
            ),
            None => SendOutcome::Ambiguous {
                detail: "vonage answered 200 without a status".into(),
            },
        },
        None => SendOutcome::Ambiguous {
            detail: "vonage answered 200 without messages".into(),
        },
    }
}

/// A client of Vonage's SMS API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct VonageClient {
    http: reqwest::Client,
    url: Url,
    api_key: String,
    api_secret: Secret,
    from: String,
}

impl VonageClient {
    /// Validate `config` (its keys named under `key`, e.g. `provider.vonage`) and build the
    /// client; `timeout` bounds every request.
    pub fn new(
        config: &VonageConfig,
        timeout: Duration,
        key: &str,
    ) -> Result<VonageClient, ProviderError> {
        let invalid = |m: String| ProviderError::InvalidConfig(m);
        if config.api_key.trim().is_empty() {
            return Err(invalid(format!("{key}.api_key is empty")));
        }
        if config.api_secret.is_empty() {
            return Err(invalid(format!("{key}.api_secret is empty")));
        }
        if config.from.trim().is_empty() {
            return Err(invalid(format!(
                "{key}.from is empty (Vonage needs a sender)"
            )));
        }
        let base = Url::parse(config.base_url.trim())
            .map_err(|e| invalid(format!("{key}.base_url: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid(format!(
                "{key}.base_url must be an http(s) URL, not {}",
                redact_url(&base)
            )));
        }
        let url = Url::parse(&format!("{}/sms/json", base.as_str().trim_end_matches('/')))
            .map_err(|e| invalid(format!("{key}.base_url: {e}")))?;
        Ok(VonageClient {
            http: http_client(timeout)?,
            url,
            api_key: config.api_key.trim().to_string(),
            api_secret: Secret::new(config.api_secret.as_str()),
            from: config.from.trim().to_string(),
        })
    }

    /// The form of a send, in order (credentials first, as Vonage's SDKs send them).
    pub fn form(&self, msg: &OutboundMessage) -> Vec<(&'static str, String)> {
        let from = msg
            .from
            .as_deref()
            .filter(|f| !f.trim().is_empty())
            .unwrap_or(&self.from);
        let mut form = vec![
            ("api_key", self.api_key.clone()),
            ("api_secret", self.api_secret.expose().to_string()),
            ("from", from.trim_start_matches('+').to_string()),
            ("to", msg.to.trim_start_matches('+').to_string()),
            ("text", msg.body.clone()),
            ("client-ref", msg.id.to_string()),
        ];
        if sms_segments(&msg.body).0 != SmsEncoding::Gsm7 {
            form.push(("type", "unicode".into()));
        }
        form
    }

    /// Send one message (see the module documentation).
    pub async fn send(&self, msg: &OutboundMessage) -> SendOutcome {
        let result = self
            .http
            .post(self.url.clone())
            .header(ACCEPT, "application/json")
            .header(CORRELATION_HEADER, header_text(&msg.correlation_id))
            .form(&self.form(msg))
            .send()
            .await;
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => return transport_outcome(e),
        };
        if !resp.status().is_success() {
            return error_outcome(resp).await;
        }
        match resp.bytes().await {
            Ok(body) => outcome_of(&body, msg),
            Err(e) => SendOutcome::Ambiguous {
                detail: format!(
                    "vonage's answer was cut off: {}",
                    error_chain(&e.without_url())
                ),
            },
        }
    }

    /// Any HTTP answer from the API's host proves it reachable (a send is the only call the
    /// SMS API has, and it would send).
    pub async fn check(&self) -> Result<(), ProviderError> {
        super::answers(self.http.head(self.url.clone()), &self.url).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn msg() -> OutboundMessage {
        OutboundMessage {
            id: Uuid::nil(),
            to: "+15551234567".into(),
            body: "hi".into(),
            from: None,
            correlation_id: "c".into(),
        }
    }

    #[test]
    fn statuses_are_classified() {
        let kind = |o: Option<SendOutcome>| match o {
            None => "sent",
            Some(SendOutcome::Transient { .. }) => "transient",
            Some(SendOutcome::Permanent { .. }) => "permanent",
            Some(SendOutcome::ProviderFault { .. }) => "fault",
            Some(SendOutcome::Ambiguous { .. }) => "ambiguous",
            Some(SendOutcome::Sent { .. }) => "sent?",
        };
        let cases = [
            (0, "sent"),
            (1, "transient"),
            (5, "transient"),
            (10, "transient"),
            (2, "permanent"),
            (3, "permanent"),
            (6, "permanent"),
            (7, "permanent"),
            (12, "permanent"),
            (29, "permanent"),
            (33, "permanent"),
            (4, "fault"),
            (8, "fault"),
            (9, "fault"),
            (15, "fault"),
            (99, "transient"),
        ];
        for (status, expected) in cases {
            assert_eq!(
                kind(classify_status(status, "x")),
                expected,
                "status {status}"
            );
        }
    }

    #[test]
    fn answers_are_read() {
        let m = msg();
        let sent = br#"{"message-count":"1","messages":[{"to":"15551234567","message-id":"0A00000012345678","status":"0","remaining-balance":"3.1","message-price":"0.03","network":"12345"}]}"#;
        assert_eq!(
            outcome_of(sent, &m),
            SendOutcome::Sent {
                provider_message_id: "0A00000012345678".into()
            }
        );
        let refused =
            br#"{"message-count":"1","messages":[{"status":"3","error-text":"Invalid to param"}]}"#;
        assert!(matches!(
            outcome_of(refused, &m),
            SendOutcome::Permanent { code: Some(3), .. }
        ));
        // One part accepted, one refused: sent (the accepted part went out).
        let partial = br#"{"message-count":"2","messages":[{"message-id":"p1","status":"0"},{"status":"1","error-text":"Throttled"}]}"#;
        assert!(outcome_of(partial, &m).is_sent());
        assert!(matches!(
            outcome_of(b"not json", &m),
            SendOutcome::Ambiguous { .. }
        ));
    }

    #[test]
    fn the_form_is_vonages() {
        let c = VonageClient::new(
            &VonageConfig {
                base_url: "http://127.0.0.1:1".into(),
                api_key: "key".into(),
                api_secret: "sec".into(),
                from: "Acme".into(),
            },
            Duration::from_secs(1),
            "provider.vonage",
        )
        .unwrap();
        let mut m = msg();
        let names: Vec<&str> = c.form(&m).iter().map(|(k, _)| *k).collect();
        assert_eq!(
            names,
            ["api_key", "api_secret", "from", "to", "text", "client-ref"]
        );
        assert_eq!(c.form(&m)[3].1, "15551234567", "E.164 without its +");
        m.body = "привет".into();
        assert_eq!(c.form(&m).last().unwrap(), &("type", "unicode".to_string()));
        assert!(!format!("{c:?}").contains("sec\""), "{c:?}");
        assert!(
            VonageClient::new(&VonageConfig::default(), Duration::from_secs(1), "x")
                .unwrap_err()
                .to_string()
                .contains("x.api_key")
        );
    }
}
