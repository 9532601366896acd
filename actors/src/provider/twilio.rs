//! Twilio's Messages API, exactly as its OpenAPI contract describes "Send a message"
//! (`twilio_api_v2010.json`, operation `CreateMessage`):
//!
//! ```text
//! POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json
//! Authorization: Basic base64(AccountSid:AuthToken)
//! Content-Type: application/x-www-form-urlencoded
//! X-Correlation-Id: <the message's correlation id>
//! I-Twilio-Idempotency-Token: <the message id>
//!
//! To=+15551234567&From=+15550000000&Body=hello&Attempt=1
//! ```
//!
//! `From` is the message's own sender, else the configured `from`; without either the
//! configured `MessagingServiceSid` goes instead (Twilio then picks a sender from the
//! service's pool). `Attempt` is the contract's "total number of attempts made (including
//! this request)". A `201 Created` carries the message resource ([`MessageResource`]); its
//! `sid` is the provider message id. Errors carry `{code, message, more_info, status}` and
//! are classified by [`classify`](super::classify).
//!
//! Two reads of the same contract: `ListMessage` (`GET .../Messages.json`, paged) finds the
//! message an ambiguous attempt may have made ([`TwilioClient::find`]), and `FetchMessage`
//! (`GET .../Messages/{Sid}.json`) reads one message's current status
//! ([`TwilioClient::fetch`]).

use std::time::Duration;

use reqwest::Url;
use reqwest::header::ACCEPT;
use serde::{Deserialize, Serialize};

use super::receipt::{Fetched, Receipt, rank};
use super::reconcile::{AttemptWindow, Reconciliation, SentFrom, is_the_attempt};
use super::{
    CORRELATION_HEADER, ProviderError, SENDER_CODES, Secret, SendOutcome, error_chain,
    error_outcome, header_text, http_client, redact_url, redacted, transport_outcome,
};
use crate::message::OutboundMessage;

/// Twilio's header for deduplicating retried requests (its value is the message id).
pub const IDEMPOTENCY_HEADER: &str = "I-Twilio-Idempotency-Token";

/// `[provider.twilio]`. `Debug` redacts `auth_token`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TwilioConfig {
    /// Base URL of the REST API, without a path: `https://api.twilio.com`, or a mock /
    /// Twilio-compatible service.
    pub base_url: String,
    /// Account SID (`AC` + 32 hex digits): the user name of HTTP basic auth and part of the
    /// path.
    pub account_sid: String,
    /// Auth token: the password of HTTP basic auth. Secret: never logged, redacted in `Debug`.
    /// Set it through `DROVER_PROVIDER__TWILIO__AUTH_TOKEN`.
    pub auth_token: String,
    /// Default sender (`From`: an E.164 number, short code or alphanumeric id of the
    /// account) for messages that do not name their own.
    pub from: Option<String>,
    /// Messaging service (`MG` + 32 hex digits) used as `MessagingServiceSid` when neither
    /// the message nor `from` gives a sender. One of the two is required.
    pub messaging_service_sid: Option<String>,
    /// Delivery receipts: the public URL at which Twilio reaches drover's
    /// `POST /providers/twilio/status` (e.g. `https://sms.example.com/providers/twilio/status`).
    /// Set, every send carries it as `StatusCallback` and callbacks are verified against it
    /// (Twilio signs the URL it called). Unset: no receipts.
    pub status_callback_url: Option<String>,
}

impl Default for TwilioConfig {
    fn default() -> Self {
        TwilioConfig {
            base_url: "https://api.twilio.com".into(),
            account_sid: String::new(),
            auth_token: String::new(),
            from: None,
            messaging_service_sid: None,
            status_callback_url: None,
        }
    }
}

impl std::fmt::Debug for TwilioConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioConfig")
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &redacted(&self.auth_token))
            .field("from", &self.from)
            .field("messaging_service_sid", &self.messaging_service_sid)
            .field("status_callback_url", &self.status_callback_url)
            .finish()
    }
}

/// The message resource a `201 Created` answer carries (`api.v2010.account.message`). Every
/// field is nullable in the contract, hence optional here; unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MessageResource {
    /// The message's SID (`SM…` or `MM…`): the provider message id.
    pub sid: Option<String>,
    /// `queued`, `accepted`, `scheduled`, `sending`, `sent`, `failed`, `delivered`, ...
    pub status: Option<String>,
    /// Recipient.
    pub to: Option<String>,
    /// Sender (null when a messaging service will pick one).
    pub from: Option<String>,
    /// Text of the message.
    pub body: Option<String>,
    /// Account that created it.
    pub account_sid: Option<String>,
    /// Messaging service used, if any.
    pub messaging_service_sid: Option<String>,
    /// Number of segments (a string in the contract).
    pub num_segments: Option<String>,
    /// Number of media items (a string in the contract).
    pub num_media: Option<String>,
    /// `outbound-api`, ...
    pub direction: Option<String>,
    /// Always `2010-04-01`.
    pub api_version: Option<String>,
    /// Price charged (a string in the contract).
    pub price: Option<String>,
    /// Currency of `price`.
    pub price_unit: Option<String>,
    /// Error code, when the message already failed.
    pub error_code: Option<i64>,
    /// Error description, when the message already failed.
    pub error_message: Option<String>,
    /// The resource's URI.
    pub uri: Option<String>,
    /// RFC 2822 creation time.
    pub date_created: Option<String>,
    /// RFC 2822 send time.
    pub date_sent: Option<String>,
    /// RFC 2822 update time.
    pub date_updated: Option<String>,
    /// Related resources.
    pub subresource_uris: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Most pages of 50 a lookup reads before it gives up: bounded work per ambiguous attempt.
pub const LOOKUP_PAGES: usize = 4;

/// A page of `ListMessage` (`ListMessageResponse`): the fields a lookup reads.
#[derive(Debug, Default, Deserialize)]
struct MessagePage {
    #[serde(default)]
    messages: Vec<MessageResource>,
    next_page_uri: Option<String>,
}

/// Which sender a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sender<'a> {
    /// `From`; `configured` when it came from the configuration rather than the message.
    From { number: &'a str, configured: bool },
    /// `MessagingServiceSid` (always from the configuration).
    Service(&'a str),
}

impl Sender<'_> {
    fn configured(&self) -> bool {
        match self {
            Sender::From { configured, .. } => *configured,
            Sender::Service(_) => true,
        }
    }
}

/// A Twilio error about the sender is the message's own problem when the message named the
/// sender, but a configuration problem (every message would fail the same way, so a
/// [`SendOutcome::ProviderFault`] that opens the circuit) when the sender came from
/// `from` / `messaging_service_sid`. Pure.
pub fn sender_fault(status: u16, outcome: SendOutcome, sender_configured: bool) -> SendOutcome {
    match outcome {
        SendOutcome::Permanent {
            code: Some(code),
            detail,
        } if sender_configured && SENDER_CODES.contains(&code) => SendOutcome::ProviderFault {
            status,
            detail: format!("configured sender rejected: {detail}"),
        },
        other => other,
    }
}

/// A client of Twilio's Messages API. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TwilioClient {
    http: reqwest::Client,
    messages_url: Url,
    account_url: Url,
    /// The base URL without its trailing `/`: Twilio's page links are paths under it.
    root: String,
    account_sid: String,
    auth_token: Secret,
    from: Option<String>,
    messaging_service_sid: Option<String>,
    status_callback: Option<String>,
}

fn non_empty(s: &Option<String>) -> Option<String> {
    s.as_ref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

impl TwilioClient {
    /// Validate `config` and build the client; `timeout` bounds every request.
    pub fn new(config: &TwilioConfig, timeout: Duration) -> Result<TwilioClient, ProviderError> {
        let invalid = |m: String| ProviderError::InvalidConfig(m);
        let sid = config.account_sid.trim();
        if sid.is_empty() {
            return Err(invalid("provider.twilio.account_sid is empty".into()));
        }
        if !sid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "provider.twilio.account_sid must be letters and digits (AC + 32 hex digits)"
                    .into(),
            ));
        }
        if config.auth_token.is_empty() {
            return Err(invalid("provider.twilio.auth_token is empty".into()));
        }
        let from = non_empty(&config.from);
        let messaging_service_sid = non_empty(&config.messaging_service_sid);
        if from.is_none() && messaging_service_sid.is_none() {
            return Err(ProviderError::MissingSender);
        }
        let base = Url::parse(config.base_url.trim())
            .map_err(|e| invalid(format!("provider.twilio.base_url: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(invalid(format!(
                "provider.twilio.base_url must be an http(s) URL, not {}",
                redact_url(&base)
            )));
        }
        let status_callback = non_empty(&config.status_callback_url);
        if let Some(cb) = &status_callback {
            match Url::parse(cb) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return Err(invalid(format!(
                        "provider.twilio.status_callback_url must be an http(s) URL, not {cb:?}"
                    )));
                }
            }
        }
        let root = base.as_str().trim_end_matches('/');
        let url = |path: String| {
            Url::parse(&format!("{root}{path}"))
                .map_err(|e| invalid(format!("provider.twilio.base_url: {e}")))
        };
        Ok(TwilioClient {
            http: http_client(timeout)?,
            messages_url: url(format!("/2010-04-01/Accounts/{sid}/Messages.json"))?,
            account_url: url(format!("/2010-04-01/Accounts/{sid}.json"))?,
            root: root.to_string(),
            account_sid: sid.to_string(),
            auth_token: Secret::new(config.auth_token.as_str()),
            from,
            messaging_service_sid,
            status_callback,
        })
    }

    /// A request to Twilio with the account's basic auth, asking for JSON.
    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose()))
            .header(ACCEPT, "application/json")
    }

    /// Where messages are posted: `{base_url}/2010-04-01/Accounts/{sid}/Messages.json`.
    pub fn messages_url(&self) -> &Url {
        &self.messages_url
    }

    fn sender<'a>(&'a self, msg: &'a OutboundMessage) -> Sender<'a> {
        if let Some(number) = msg.from.as_deref().filter(|f| !f.trim().is_empty()) {
            return Sender::From {
                number,
                configured: false,
            };
        }
        match (&self.from, &self.messaging_service_sid) {
            (Some(number), _) => Sender::From {
                number,
                configured: true,
            },
            (None, Some(service)) => Sender::Service(service),
            // `new` requires one of them.
            (None, None) => Sender::Service(""),
        }
    }

    /// The form fields of a send, in order: `To`, `From` or `MessagingServiceSid`, `Body`,
    /// `Attempt`, and `StatusCallback` when receipts are on.
    pub fn form(&self, msg: &OutboundMessage, attempt: u32) -> Vec<(&'static str, String)> {
        let sender = match self.sender(msg) {
            Sender::From { number, .. } => ("From", number.to_string()),
            Sender::Service(sid) => ("MessagingServiceSid", sid.to_string()),
        };
        let mut form = vec![
            ("To", msg.to.clone()),
            sender,
            ("Body", msg.body.clone()),
            ("Attempt", attempt.max(1).to_string()),
        ];
        if let Some(cb) = &self.status_callback {
            form.push(("StatusCallback", cb.clone()));
        }
        form
    }

    /// Send one message (see the module documentation for the request).
    pub async fn send(&self, msg: &OutboundMessage, attempt: u32) -> SendOutcome {
        let sender = self.sender(msg);
        let result = self
            .request(reqwest::Method::POST, self.messages_url.clone())
            .header(CORRELATION_HEADER, header_text(&msg.correlation_id))
            .header(IDEMPOTENCY_HEADER, msg.id.to_string())
            .form(&self.form(msg, attempt))
            .send()
            .await;
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => return transport_outcome(e),
        };
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            return sender_fault(status, error_outcome(resp).await, sender.configured());
        }
        // Twilio accepted the message: whatever happens while reading the body, it is sent.
        let resource = match resp.bytes().await {
            Ok(body) => serde_json::from_slice::<MessageResource>(&body).map_err(|e| e.to_string()),
            Err(e) => Err(error_chain(&e.without_url())),
        };
        match resource {
            Ok(MessageResource { sid: Some(sid), .. }) if !sid.is_empty() => SendOutcome::Sent {
                provider_message_id: sid,
            },
            other => {
                let why = match other {
                    Err(e) => e,
                    Ok(_) => "no sid".to_string(),
                };
                tracing::warn!(
                    message_id = %msg.id,
                    correlation_id = %msg.correlation_id,
                    status,
                    "twilio accepted the message but its answer has no readable sid ({why}); \
                     recording the message id instead"
                );
                SendOutcome::Sent {
                    provider_message_id: msg.id.to_string(),
                }
            }
        }
    }

    /// Whether Twilio has the message an earlier attempt of `msg` made within `window`
    /// (see [`reconcile`](super::reconcile)): `GET` the account's messages with `To`, `From`
    /// (when a number is the sender) and `DateSent>` the window's first day, 50 a page,
    /// following `next_page_uri` for at most [`LOOKUP_PAGES`] pages.
    ///
    /// Twilio sets `date_sent` once it has handed the message on; one it still holds
    /// (`queued`, `accepted`) is not listed under this filter, so a lookup within seconds of
    /// the earlier attempt can miss it.
    pub async fn find(&self, msg: &OutboundMessage, window: AttemptWindow) -> Reconciliation {
        let from = match self.sender(msg) {
            Sender::From { number, .. } => SentFrom::Number(number),
            Sender::Service(service) => SentFrom::Service(service),
        };
        let mut url = self.messages_url.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("To", &msg.to);
            if let SentFrom::Number(number) = from {
                query.append_pair("From", number);
            }
            query.append_pair("DateSent>", &window.first_day());
            query.append_pair("PageSize", "50");
        }
        for _ in 0..LOOKUP_PAGES {
            let answer = self
                .request(reqwest::Method::GET, url.clone())
                .header(CORRELATION_HEADER, header_text(&msg.correlation_id))
                .send()
                .await;
            let resp = match answer {
                Ok(resp) => resp,
                Err(e) => return Reconciliation::Failed(error_chain(&e.without_url())),
            };
            let status = resp.status();
            if !status.is_success() {
                return Reconciliation::Failed(format!("listing messages answered {status}"));
            }
            let page: MessagePage = match resp.bytes().await {
                Ok(body) => match serde_json::from_slice(&body) {
                    Ok(page) => page,
                    Err(e) => {
                        return Reconciliation::Failed(format!("unreadable message list: {e}"));
                    }
                },
                Err(e) => return Reconciliation::Failed(error_chain(&e.without_url())),
            };
            if let Some(sid) = page
                .messages
                .iter()
                .find(|m| is_the_attempt(m, msg, from, window))
                .and_then(|m| m.sid.clone())
            {
                return Reconciliation::Found {
                    provider_message_id: sid,
                };
            }
            // The next page's path and query, under the configured base (its host kept).
            match page.next_page_uri.as_deref().filter(|u| u.starts_with('/')) {
                None => return Reconciliation::NotFound,
                Some(next) => match Url::parse(&format!("{}{next}", self.root)) {
                    Ok(next) => url = next,
                    Err(e) => {
                        return Reconciliation::Failed(format!("unusable next_page_uri: {e}"));
                    }
                },
            }
        }
        Reconciliation::Failed(format!("more than {LOOKUP_PAGES} pages of messages"))
    }

    /// Twilio's current word on the message it knows as `sid` (`FetchMessage`:
    /// `GET {base_url}/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json`), as a receipt
    /// would carry it: its `status` and `error_code`.
    pub async fn fetch(&self, sid: &str) -> Fetched {
        // A sid goes into the path: letters and digits only (SM + 32 hex digits), so a
        // stored value can never point the request elsewhere.
        if sid.is_empty() || !sid.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Fetched::Failed(format!("{sid:?} is not a Twilio message sid"));
        }
        let path = format!(
            "/2010-04-01/Accounts/{}/Messages/{sid}.json",
            self.account_sid
        );
        let url = match Url::parse(&format!("{}{path}", self.root)) {
            Ok(url) => url,
            Err(e) => return Fetched::Failed(format!("message URL: {e}")),
        };
        let resp = match self.request(reqwest::Method::GET, url).send().await {
            Ok(resp) => resp,
            Err(e) => return Fetched::Failed(error_chain(&e.without_url())),
        };
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Fetched::NotFound;
        }
        if !status.is_success() {
            return Fetched::Failed(format!("fetching the message answered {status}"));
        }
        let resource: MessageResource = match resp.bytes().await {
            Ok(body) => match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return Fetched::Failed(format!("unreadable message resource: {e}")),
            },
            Err(e) => return Fetched::Failed(error_chain(&e.without_url())),
        };
        match resource.status.filter(|s| rank(s).is_some()) {
            Some(word) => Fetched::Known(Receipt {
                provider_message_id: resource.sid.unwrap_or_else(|| sid.to_string()),
                status: word,
                error_code: resource.error_code,
            }),
            None => Fetched::Failed("the message resource has no known status".into()),
        }
    }

    /// `GET {base_url}/2010-04-01/Accounts/{sid}.json` with the configured credentials must
    /// answer 2xx.
    pub async fn check(&self) -> Result<(), ProviderError> {
        let url = redact_url(&self.account_url);
        let resp = self
            .request(reqwest::Method::GET, self.account_url.clone())
            .send()
            .await
            .map_err(|e| ProviderError::Unreachable {
                url: url.clone(),
                detail: error_chain(&e.without_url()),
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let body = resp.bytes().await.ok();
        let detail = body
            .as_deref()
            .and_then(super::ApiError::parse)
            .and_then(|e| e.message)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
        Err(ProviderError::Rejected {
            url,
            status: status.as_u16(),
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ApiError;
    use crate::provider::classify;
    use uuid::Uuid;

    fn config() -> TwilioConfig {
        TwilioConfig {
            base_url: "http://127.0.0.1:1/".into(),
            account_sid: "AC0123456789abcdef0123456789abcdef".into(),
            auth_token: "tok".into(),
            from: None,
            messaging_service_sid: Some("MG0123456789abcdef0123456789abcdef".into()),
            status_callback_url: None,
        }
    }

    fn msg(from: Option<&str>) -> OutboundMessage {
        OutboundMessage {
            id: Uuid::nil(),
            to: "+15551234567".into(),
            body: "hi".into(),
            from: from.map(Into::into),
            correlation_id: "c".into(),
        }
    }

    #[test]
    fn urls_and_sender_choice() {
        let c = TwilioClient::new(&config(), Duration::from_secs(1)).unwrap();
        assert_eq!(
            c.messages_url().as_str(),
            "http://127.0.0.1:1/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json"
        );
        let f = c.form(&msg(None), 0);
        assert_eq!(f[1].0, "MessagingServiceSid");
        assert_eq!(f[3], ("Attempt", "1".to_string()));
        let f = c.form(&msg(Some("+15550001111")), 3);
        assert_eq!(f[1], ("From", "+15550001111".to_string()));
        assert_eq!(f[3], ("Attempt", "3".to_string()));

        let mut cfg = config();
        cfg.from = Some("+15559999999".into());
        let c = TwilioClient::new(&cfg, Duration::from_secs(1)).unwrap();
        assert_eq!(
            c.form(&msg(None), 1)[1],
            ("From", "+15559999999".to_string())
        );
        assert_eq!(
            c.form(&msg(Some("+15550001111")), 1)[1],
            ("From", "+15550001111".to_string())
        );
    }

    #[test]
    fn config_is_validated_and_debug_hides_the_token() {
        let mut cfg = config();
        cfg.auth_token = "super-secret-token".into();
        let c = TwilioClient::new(&cfg, Duration::from_secs(1)).unwrap();
        assert!(!format!("{c:?}").contains("super-secret-token"));
        assert!(!format!("{cfg:?}").contains("super-secret-token"));
        for bad in [
            TwilioConfig {
                account_sid: "".into(),
                ..config()
            },
            TwilioConfig {
                account_sid: "AC/../x".into(),
                ..config()
            },
            TwilioConfig {
                auth_token: String::new(),
                ..config()
            },
            TwilioConfig {
                base_url: "not a url".into(),
                ..config()
            },
            TwilioConfig {
                base_url: "ftp://example.com".into(),
                ..config()
            },
        ] {
            assert!(matches!(
                TwilioClient::new(&bad, Duration::from_secs(1)),
                Err(ProviderError::InvalidConfig(_))
            ));
        }
        let none = TwilioConfig {
            from: Some(" ".into()),
            messaging_service_sid: None,
            ..config()
        };
        assert!(matches!(
            TwilioClient::new(&none, Duration::from_secs(1)),
            Err(ProviderError::MissingSender)
        ));
    }

    #[test]
    fn sender_errors_blame_the_configuration_only_when_it_chose_the_sender() {
        let e = ApiError {
            code: Some(21606),
            ..ApiError::default()
        };
        let permanent = classify(400, Some(&e));
        assert!(matches!(
            sender_fault(400, permanent.clone(), true),
            SendOutcome::ProviderFault { status: 400, .. }
        ));
        assert_eq!(sender_fault(400, permanent.clone(), false), permanent);
        let other = classify(
            400,
            Some(&ApiError {
                code: Some(21211),
                ..ApiError::default()
            }),
        );
        assert_eq!(sender_fault(400, other.clone(), true), other);
    }
}
