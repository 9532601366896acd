//! The SMS provider layer: one [`Provider`] (Twilio, a generic JSON webhook, or a seeded
//! simulation) that sends an [`OutboundMessage`] and says what became of it as a
//! [`SendOutcome`], plus the [`CircuitBreaker`] that the sending side keeps in front of it.
//!
//! ```text
//! [provider]                kind = "simulated" | "twilio" | "webhook", timeout_ms,
//!                           reconcile_timeout_ms
//! [provider.twilio]         base_url, account_sid, auth_token, from, messaging_service_sid
//! [provider.webhook]        url, bearer_token
//! [provider.simulated]      latency_ms, transient_failure_rate, permanent_failure_rate, seed
//! [provider.circuit]        failure_threshold, open_ms
//! ```
//!
//! # Outcomes
//!
//! Every HTTP answer that is not a success goes through one pure function, [`classify`], of
//! the status and the (leniently) parsed error body:
//!
//! | answer                                   | outcome                         |
//! |------------------------------------------|---------------------------------|
//! | 2xx                                      | [`SendOutcome::Sent`]           |
//! | 429, 408, 5xx                            | [`SendOutcome::Transient`]      |
//! | 401, 403, 3xx, 404, 405; Twilio 20003/20005 | [`SendOutcome::ProviderFault`] |
//! | other 4xx (21211, 21610, 21614, ...)     | [`SendOutcome::Permanent`]      |
//!
//! A per-recipient Twilio code (see [`PERMANENT_CODES`]) wins over the status, so a
//! per-message rejection never opens the circuit. Transport errors: a connection that could
//! not be made is `Transient` (nothing was sent); no answer within `timeout_ms` after the
//! request went out, or a connection lost mid-request, is [`SendOutcome::Ambiguous`].
//!
//! Secrets (the Twilio auth token, the webhook bearer token) never show in `Debug` output or
//! in logs. `Serialize` writes the configuration as it is: render it through the
//! application's redaction (`Config::redacted_toml`).

use std::error::Error as _;
use std::fmt;
use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};

use crate::message::OutboundMessage;

pub mod circuit;
pub mod receipt;
pub mod reconcile;
pub mod simulated;
pub mod twilio;
pub mod vonage;
pub mod webhook;

pub use circuit::{CircuitBreaker, CircuitConfig, CircuitState, Permit, Transition};
pub use receipt::Fetched;
pub use reconcile::{AttemptWindow, Reconciliation};
pub use simulated::{SimulatedConfig, SimulatedProvider};
pub use twilio::{MessageResource, TwilioClient, TwilioConfig};
pub use vonage::{VonageClient, VonageConfig};
pub use webhook::{WebhookClient, WebhookConfig};

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// `[provider]`: which provider sends SMS, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// This provider's name: its actor is `root/providers/<name>`, and metrics, attempts and
    /// alerts name it. Letters, digits, `-` and `_`.
    pub name: String,
    /// `[[provider.fallbacks]]`: providers tried in order while those before them are down
    /// (their circuit open), each with the keys of `[provider]` (its own kind, credentials,
    /// timeout and circuit breaker) and a `name`; none of their own. Empty: one provider.
    pub fallbacks: Vec<ProviderConfig>,
    /// Which provider to use: `"simulated"` (the default: no network at all), `"twilio"` or
    /// `"webhook"`.
    pub kind: ProviderKind,
    /// Per-request time limit in milliseconds (connecting, sending and reading the answer).
    /// A request that went out but got no answer in time is `Ambiguous`: the provider may
    /// have sent the SMS. Connecting alone gets at most half of it (and at most 5 s).
    pub timeout_ms: u64,
    /// Before an attempt that follows one whose fate is unknown (a timeout after the request
    /// went out, a worker killed mid-call), the provider is asked whether that one went
    /// through ([`Provider::reconcile`]); the lookup gets at most this many milliseconds and
    /// the message is sent as before when it gets no answer. `0`: never ask.
    pub reconcile_timeout_ms: u64,
    /// `[provider.twilio]`: used when `kind = "twilio"`.
    pub twilio: TwilioConfig,
    /// `[provider.webhook]`: used when `kind = "webhook"`.
    pub webhook: WebhookConfig,
    /// `[provider.vonage]`: used when `kind = "vonage"`.
    pub vonage: VonageConfig,
    /// `[provider.simulated]`: used when `kind = "simulated"`.
    pub simulated: SimulatedConfig,
    /// `[provider.circuit]`: the circuit breaker in front of whichever provider is used.
    pub circuit: CircuitConfig,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            name: "primary".into(),
            fallbacks: Vec::new(),
            kind: ProviderKind::Simulated,
            timeout_ms: 10_000,
            reconcile_timeout_ms: 5_000,
            twilio: TwilioConfig::default(),
            webhook: WebhookConfig::default(),
            vonage: VonageConfig::default(),
            simulated: SimulatedConfig::default(),
            circuit: CircuitConfig::default(),
        }
    }
}

impl ProviderConfig {
    /// The providers in the order they are tried: this one (the primary), then the fallbacks.
    pub fn chain(&self) -> Vec<&ProviderConfig> {
        std::iter::once(self).chain(self.fallbacks.iter()).collect()
    }

    /// The longest `timeout_ms` in the chain: what a sending lease must cover.
    pub fn longest_timeout_ms(&self) -> u64 {
        self.chain()
            .iter()
            .map(|c| c.timeout_ms)
            .max()
            .unwrap_or(self.timeout_ms)
    }

    /// Refuse a chain that cannot work, naming the entry: names that are not plain or not
    /// unique, a fallback with fallbacks of its own, an entry its provider refuses.
    pub fn validate_chain(&self) -> Result<(), ProviderError> {
        let invalid = |m: String| Err(ProviderError::InvalidConfig(m));
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.chain().into_iter().enumerate() {
            let at = if i == 0 {
                "provider".to_string()
            } else {
                format!("provider.fallbacks[{}]", i - 1)
            };
            if c.name.is_empty()
                || c.name.len() > 40
                || !c
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return invalid(format!(
                    "{at}.name {:?} must be 1 to 40 letters, digits, - or _",
                    c.name
                ));
            }
            if !seen.insert(c.name.as_str()) {
                return invalid(format!(
                    "{at}.name {:?} is used twice: every provider of the chain needs its own name",
                    c.name
                ));
            }
            if i > 0 && !c.fallbacks.is_empty() {
                return invalid(format!(
                    "{at} has fallbacks of its own: list them all under provider.fallbacks"
                ));
            }
            if let Err(e) = Provider::from_config(c) {
                return match (i, e) {
                    (0, e) => Err(e),
                    (_, ProviderError::InvalidConfig(why)) => {
                        invalid(format!("{at} ({}): {why}", c.name))
                    }
                    (_, e) => invalid(format!("{at} ({}): {e}", c.name)),
                };
            }
        }
        Ok(())
    }

    /// Whether delivery receipts come: Twilio with a `status_callback_url`.
    pub fn receipts_on(&self) -> bool {
        self.kind == ProviderKind::Twilio
            && self
                .twilio
                .status_callback_url
                .as_deref()
                .is_some_and(|u| !u.trim().is_empty())
    }

    /// `timeout_ms` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Which provider sends SMS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// No network: seeded random outcomes after a fixed latency ([`SimulatedProvider`]).
    #[default]
    Simulated,
    /// Twilio's Messages API, or a service that implements it ([`TwilioClient`]).
    Twilio,
    /// A JSON POST to a URL of your own ([`WebhookClient`]).
    Webhook,
    /// Vonage's (Nexmo's) SMS API ([`VonageClient`]).
    Vonage,
}

impl ProviderKind {
    /// The configuration spelling: `"simulated"`, `"twilio"` or `"webhook"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Simulated => "simulated",
            ProviderKind::Twilio => "twilio",
            ProviderKind::Webhook => "webhook",
            ProviderKind::Vonage => "vonage",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret held by a client (a token or password): `Debug` shows `Secret("<redacted>")`;
/// only [`Secret::expose`] reveals it, to put it on the wire.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// What `Debug` shows instead of a non-empty secret.
    pub(crate) const REDACTED: &'static str = "<redacted>";

    /// Wrap a secret value.
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Secret").field(&redacted(&self.0)).finish()
    }
}

/// What `Debug` shows for a secret configuration value: `""` when unset (so "not set" stays
/// visible), `<redacted>` otherwise.
pub(crate) fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() {
        ""
    } else {
        Secret::REDACTED
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and outcomes
// ---------------------------------------------------------------------------------------------

/// Why a provider could not be built from its configuration, or failed its startup
/// [`check`](Provider::check). Sending never fails with this: it returns a [`SendOutcome`].
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A configuration value is missing or malformed.
    #[error("invalid provider configuration: {0}")]
    InvalidConfig(String),
    /// Twilio needs a default sender: `from` or `messaging_service_sid`.
    #[error(
        "the twilio provider needs a sender: set provider.twilio.from or provider.twilio.messaging_service_sid"
    )]
    MissingSender,
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// No HTTP answer at all (connection refused, DNS, TLS, timeout).
    #[error("provider at {url} is unreachable: {detail}")]
    Unreachable {
        /// Where (without credentials or query string).
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// An HTTP answer that is not acceptable (Twilio: anything but 2xx, e.g. 401 for bad
    /// credentials).
    #[error("provider at {url} answered HTTP {status}: {detail}")]
    Rejected {
        /// Where (without credentials or query string).
        url: String,
        /// The HTTP status.
        status: u16,
        /// The provider's explanation, if any.
        detail: String,
    },
}

/// What became of one send attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SendOutcome {
    /// The provider accepted the message.
    Sent {
        /// The provider's id of the message (Twilio's `sid`, e.g. `SM…`).
        provider_message_id: String,
    },
    /// Not delivered to the provider, for a reason that may pass (429, 408, 5xx, no
    /// connection): retry later.
    Transient {
        /// A short machine-readable class: `rate_limited`, `server_error`,
        /// `request_timeout`, `connect`, `unexpected_status`, `simulated`.
        class: &'static str,
        /// Human-readable detail (the provider's error message, the transport error).
        detail: String,
    },
    /// The provider refused this message for good (invalid or unsubscribed recipient, body
    /// too long, ...): do not retry.
    Permanent {
        /// The provider's error code (Twilio's `code`, e.g. 21211), if it gave one.
        code: Option<i64>,
        /// Human-readable detail.
        detail: String,
    },
    /// The provider refused our credentials or account (401, 403), or is misconfigured
    /// (wrong URL, bad configured sender). Not the message's fault: must not use up one of
    /// its attempts; opens the circuit at once.
    ProviderFault {
        /// The HTTP status.
        status: u16,
        /// Human-readable detail.
        detail: String,
    },
    /// The request went out but no answer came back (timeout, connection lost): the
    /// provider may or may not have sent the SMS.
    Ambiguous {
        /// Human-readable detail.
        detail: String,
    },
}

impl SendOutcome {
    /// A short machine-readable class, for storage and metrics: `sent`; the transient
    /// `class`; for permanent failures `invalid_recipient` (21211), `unsubscribed` (21610),
    /// `not_mobile` (21614), `region_not_permitted` (21408), `unreachable_recipient` (21612),
    /// `body_too_long` (21617), `invalid_sender` (sender codes) or `rejected`; `unauthorized`
    /// (401), `forbidden` (403) or `provider_fault`; `ambiguous`.
    pub fn error_class(&self) -> &str {
        match self {
            SendOutcome::Sent { .. } => "sent",
            SendOutcome::Transient { class, .. } => class,
            SendOutcome::Permanent { code, .. } => match code {
                Some(21211) => "invalid_recipient",
                Some(21610) => "unsubscribed",
                Some(21614) => "not_mobile",
                Some(21408) => "region_not_permitted",
                Some(21612) => "unreachable_recipient",
                Some(21617) => "body_too_long",
                Some(c) if SENDER_CODES.contains(c) => "invalid_sender",
                _ => "rejected",
            },
            SendOutcome::ProviderFault { status, .. } => match status {
                401 => "unauthorized",
                403 => "forbidden",
                _ => "provider_fault",
            },
            SendOutcome::Ambiguous { .. } => "ambiguous",
        }
    }

    /// Whether the provider accepted the message.
    pub fn is_sent(&self) -> bool {
        matches!(self, SendOutcome::Sent { .. })
    }

    /// Whether this attempt counts against the message's attempt budget: everything but a
    /// [`ProviderFault`](SendOutcome::ProviderFault), which is the provider's (or our
    /// configuration's) problem, not the message's.
    pub fn consumes_attempt(&self) -> bool {
        !matches!(self, SendOutcome::ProviderFault { .. })
    }

    /// The human-readable detail of a failure (`None` for `Sent`).
    pub fn detail(&self) -> Option<&str> {
        match self {
            SendOutcome::Sent { .. } => None,
            SendOutcome::Transient { detail, .. }
            | SendOutcome::Permanent { detail, .. }
            | SendOutcome::ProviderFault { detail, .. }
            | SendOutcome::Ambiguous { detail } => Some(detail),
        }
    }
}

impl fmt::Display for SendOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendOutcome::Sent {
                provider_message_id,
            } => write!(f, "sent ({provider_message_id})"),
            other => write!(
                f,
                "{}: {}",
                other.error_class(),
                other.detail().unwrap_or_default()
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------------------------

/// Twilio error codes that reject one message for a reason tied to that message (its
/// recipient or its body). They are [`SendOutcome::Permanent`] whatever the HTTP status:
/// 21211 invalid `To`, 21408 region not enabled, 21610 recipient unsubscribed (STOP),
/// 21612 unreachable `To`, 21614 not a mobile number, 21617 body too long.
pub const PERMANENT_CODES: &[i64] = &[21211, 21408, 21610, 21612, 21614, 21617];

/// Twilio error codes about the sender: 21212 invalid `From`, 21601 / 21606 `From` is not a
/// message-capable number of the account, 21603 `From` or `MessagingServiceSid` missing,
/// 21705 invalid messaging service. [`classify`] makes them `Permanent`; the Twilio client
/// turns them into a `ProviderFault` when the sender came from the configuration rather than
/// from the message ([`twilio::sender_fault`]).
pub const SENDER_CODES: &[i64] = &[21212, 21601, 21603, 21606, 21705];

/// Twilio error codes about the account itself (20003 authentication failed, 20005 account
/// not active): a [`SendOutcome::ProviderFault`] whatever the HTTP status.
pub const ACCOUNT_CODES: &[i64] = &[20003, 20005];

/// A provider's error body, as Twilio shapes it:
/// `{"code": 21211, "message": "...", "more_info": "https://...", "status": 400}`.
///
/// Parsed leniently ([`ApiError::parse`]): every field is optional, a numeric string is
/// accepted for `code` and `status`, and a body that is not JSON becomes its (truncated) text
/// as `message`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// The provider's error code (Twilio: 5 digits, e.g. 21211).
    pub code: Option<i64>,
    /// The provider's explanation.
    pub message: Option<String>,
    /// A link to the documentation of the code.
    pub more_info: Option<String>,
    /// The HTTP status, repeated in the body.
    pub status: Option<u16>,
}

/// Longest provider text kept in a detail, in characters.
const MAX_DETAIL_CHARS: usize = 300;

impl ApiError {
    /// Parse an error body. `None` for an empty body.
    pub fn parse(body: &[u8]) -> Option<ApiError> {
        fn int(v: Option<&serde_json::Value>) -> Option<i64> {
            match v? {
                serde_json::Value::Number(n) => n.as_i64(),
                serde_json::Value::String(s) => s.trim().parse().ok(),
                _ => None,
            }
        }
        fn text(v: Option<&serde_json::Value>) -> Option<String> {
            match v? {
                serde_json::Value::String(s) if !s.is_empty() => Some(truncate(s)),
                serde_json::Value::Null => None,
                serde_json::Value::String(_) => None,
                other => Some(truncate(&other.to_string())),
            }
        }
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Object(map)) => Some(ApiError {
                code: int(map.get("code")),
                message: text(map.get("message")).or_else(|| text(map.get("error"))),
                more_info: text(map.get("more_info")),
                status: int(map.get("status")).and_then(|s| u16::try_from(s).ok()),
            }),
            _ => {
                let raw = String::from_utf8_lossy(body);
                let raw = raw.trim();
                (!raw.is_empty()).then(|| ApiError {
                    message: Some(truncate(raw)),
                    ..ApiError::default()
                })
            }
        }
    }
}

fn truncate(s: &str) -> String {
    match s.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// `HTTP 400: [21211] The 'To' number ... (https://...)`.
fn status_detail(status: u16, error: Option<&ApiError>) -> String {
    let mut s = format!("HTTP {status}");
    if let Some(e) = error {
        s.push(':');
        if let Some(code) = e.code {
            s.push_str(&format!(" [{code}]"));
        }
        if let Some(m) = &e.message {
            s.push(' ');
            s.push_str(m);
        }
        if let Some(info) = &e.more_info {
            s.push_str(&format!(" ({info})"));
        }
    }
    s
}

/// Classify an HTTP answer that is not a success (not 2xx), from its status and its parsed
/// error body. Pure: the single place where statuses and provider codes become outcomes (see
/// the module documentation for the table). A 2xx passed in anyway is `Ambiguous`: the
/// caller should have read the success body instead.
pub fn classify(status: u16, error: Option<&ApiError>) -> SendOutcome {
    let detail = status_detail(status, error);
    let code = error.and_then(|e| e.code);
    let per_message = code.is_some_and(|c| PERMANENT_CODES.contains(&c));
    let account = code.is_some_and(|c| ACCOUNT_CODES.contains(&c));
    match status {
        429 => SendOutcome::Transient {
            class: "rate_limited",
            detail,
        },
        500..=599 => SendOutcome::Transient {
            class: "server_error",
            detail,
        },
        408 => SendOutcome::Transient {
            class: "request_timeout",
            detail,
        },
        _ if per_message => SendOutcome::Permanent { code, detail },
        _ if account => SendOutcome::ProviderFault { status, detail },
        // Credentials or account; a redirect (not followed) or an endpoint that is not there
        // (404, 405) means a wrong base URL: every message would fail the same way.
        300..=399 | 401 | 403 | 404 | 405 => SendOutcome::ProviderFault { status, detail },
        400..=499 => SendOutcome::Permanent { code, detail },
        200..=299 => SendOutcome::Ambiguous {
            detail: format!("{detail} (a success status classified as an error)"),
        },
        _ => SendOutcome::Transient {
            class: "unexpected_status",
            detail,
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Shared HTTP plumbing
// ---------------------------------------------------------------------------------------------

const USER_AGENT: &str = concat!("drover/", env!("CARGO_PKG_VERSION"));

/// The `reqwest` client both HTTP providers use: `timeout` for the whole request, at most half
/// of it (and 5 s) to connect, so that a slow connection ends as a connect error (`Transient`:
/// nothing was sent) before the overall timeout (`Ambiguous`) can fire; redirects are not
/// followed (a POST must not turn into a GET somewhere else).
fn http_client(timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    if timeout.is_zero() {
        return Err(ProviderError::InvalidConfig(
            "provider.timeout_ms must be positive".into(),
        ));
    }
    let connect = (timeout / 2)
        .min(Duration::from_secs(5))
        .max(Duration::from_millis(1));
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(connect)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .build()
        .map_err(ProviderError::Client)
}

/// A URL fit for messages and logs: no user info, no query string, no fragment.
/// How errors and logs name a provider URL: scheme, host and port only (a path or query
/// can hold a token).
fn redact_url(url: &reqwest::Url) -> String {
    crate::redact::origin(url.as_str())
}

/// An error and its sources, joined by `: ` (reqwest's own `Display` stops at the top).
fn error_chain(err: &reqwest::Error) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let m = e.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        source = e.source();
    }
    s
}

/// The outcome of a request that got no HTTP answer.
fn transport_outcome(err: reqwest::Error) -> SendOutcome {
    let err = err.without_url();
    let detail = error_chain(&err);
    if err.is_connect() {
        // Includes connect timeouts, DNS and TLS handshake failures: nothing was sent.
        SendOutcome::Transient {
            class: "connect",
            detail,
        }
    } else if err.is_timeout() {
        SendOutcome::Ambiguous {
            detail: format!("no answer within the timeout after sending: {detail}"),
        }
    } else if err.is_builder() {
        SendOutcome::Permanent {
            code: None,
            detail: format!("the request could not be built: {detail}"),
        }
    } else {
        SendOutcome::Ambiguous {
            detail: format!("connection lost after sending: {detail}"),
        }
    }
}

/// Any HTTP answer to `req` (a `HEAD`, even 404 or 405) proves `url` reachable; no answer
/// (connection refused, DNS, TLS, timeout) does not.
async fn answers(req: reqwest::RequestBuilder, url: &reqwest::Url) -> Result<(), ProviderError> {
    req.send()
        .await
        .map(|_| ())
        .map_err(|e| ProviderError::Unreachable {
            url: redact_url(url),
            detail: error_chain(&e.without_url()),
        })
}

/// The outcome of an HTTP answer that is not 2xx.
async fn error_outcome(resp: reqwest::Response) -> SendOutcome {
    let status = resp.status().as_u16();
    let body = resp.bytes().await.ok();
    let error = body.as_deref().and_then(ApiError::parse);
    classify(status, error.as_ref())
}

/// A header value carrying arbitrary text: at most 200 bytes, and every byte that is not
/// visible ASCII (or is `%`) percent-encoded, so any correlation id fits in a header.
fn header_text(s: &str) -> HeaderValue {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end);
    for b in s[..end].bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&out).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Header carrying the message's correlation id on every provider request.
pub const CORRELATION_HEADER: &str = "X-Correlation-Id";

// ---------------------------------------------------------------------------------------------
// The provider
// ---------------------------------------------------------------------------------------------

/// The configured SMS provider. Cheap to clone (clones share the HTTP connection pool and, for
/// the simulation, the random stream).
#[derive(Debug, Clone)]
pub enum Provider {
    /// Twilio's Messages API.
    Twilio(Box<TwilioClient>),
    /// A JSON POST to a URL of your own.
    Webhook(WebhookClient),
    /// Vonage's SMS API.
    Vonage(VonageClient),
    /// Seeded random outcomes, no network.
    Simulated(SimulatedProvider),
}

impl Provider {
    /// Build the provider that `config.kind` names, validating its section.
    pub fn from_config(config: &ProviderConfig) -> Result<Provider, ProviderError> {
        Ok(match config.kind {
            ProviderKind::Twilio => Provider::Twilio(Box::new(TwilioClient::new(
                &config.twilio,
                config.timeout(),
            )?)),
            ProviderKind::Webhook => {
                Provider::Webhook(WebhookClient::new(&config.webhook, config.timeout())?)
            }
            ProviderKind::Vonage => Provider::Vonage(VonageClient::new(
                &config.vonage,
                config.timeout(),
                "provider.vonage",
            )?),
            ProviderKind::Simulated => {
                Provider::Simulated(SimulatedProvider::new(&config.simulated)?)
            }
        })
    }

    /// Which kind of provider this is.
    pub fn kind(&self) -> ProviderKind {
        match self {
            Provider::Twilio(_) => ProviderKind::Twilio,
            Provider::Webhook(_) => ProviderKind::Webhook,
            Provider::Vonage(_) => ProviderKind::Vonage,
            Provider::Simulated(_) => ProviderKind::Simulated,
        }
    }

    /// Send `msg`; `attempt` is 1 for the first attempt. Never fails: every result, transport
    /// errors included, is a [`SendOutcome`].
    pub async fn send(&self, msg: &OutboundMessage, attempt: u32) -> SendOutcome {
        let outcome = match self {
            Provider::Twilio(c) => c.send(msg, attempt).await,
            Provider::Webhook(c) => c.send(msg, attempt).await,
            Provider::Vonage(c) => c.send(msg).await,
            Provider::Simulated(s) => s.send(msg, attempt).await,
        };
        tracing::debug!(
            provider = %self.kind(),
            message_id = %msg.id,
            correlation_id = %msg.correlation_id,
            attempt,
            outcome = outcome.error_class(),
            "sms send attempt"
        );
        outcome
    }

    /// Whether the provider already has the message an earlier attempt of `msg` made within
    /// `window` (see [`reconcile`]). Twilio is asked; the webhook deduplicates by the
    /// `Idempotency-Key` header itself and the simulation has nothing to ask:
    /// [`Reconciliation::Unsupported`]. Never fails: a lookup without an answer is
    /// [`Reconciliation::Failed`].
    pub async fn reconcile(&self, msg: &OutboundMessage, window: AttemptWindow) -> Reconciliation {
        let found = match self {
            Provider::Twilio(c) => c.find(msg, window).await,
            Provider::Webhook(_) | Provider::Vonage(_) | Provider::Simulated(_) => {
                Reconciliation::Unsupported
            }
        };
        tracing::debug!(
            provider = %self.kind(),
            message_id = %msg.id,
            correlation_id = %msg.correlation_id,
            result = found.label(),
            "reconciliation of an earlier attempt"
        );
        found
    }

    /// The provider's current word on the message it knows as `provider_message_id` (Twilio:
    /// `FetchMessage`); the webhook and the simulation cannot be asked. Never fails: no
    /// usable answer is [`Fetched::Failed`].
    pub async fn fetch(&self, provider_message_id: &str) -> Fetched {
        match self {
            Provider::Twilio(c) => c.fetch(provider_message_id).await,
            Provider::Webhook(_) | Provider::Vonage(_) | Provider::Simulated(_) => {
                Fetched::Unsupported
            }
        }
    }

    /// Startup reachability check. Twilio: `GET /2010-04-01/Accounts/{sid}.json` with the
    /// configured credentials must answer 2xx. Webhook: the URL must give any HTTP answer.
    /// Simulated: always `Ok`.
    pub async fn check(&self) -> Result<(), ProviderError> {
        match self {
            Provider::Twilio(c) => c.check().await,
            Provider::Webhook(c) => c.check().await,
            Provider::Vonage(c) => c.check().await,
            Provider::Simulated(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twilio(code: i64, status: u16) -> ApiError {
        ApiError {
            code: Some(code),
            message: Some("m".into()),
            more_info: Some(format!("https://www.twilio.com/docs/errors/{code}")),
            status: Some(status),
        }
    }

    #[test]
    fn classification_table() {
        #[derive(Debug, PartialEq)]
        enum K {
            Transient(&'static str),
            Permanent(Option<i64>),
            Fault,
            Ambiguous,
        }
        let cases: Vec<(u16, Option<ApiError>, K, &str)> = vec![
            (429, None, K::Transient("rate_limited"), "rate_limited"),
            (
                429,
                Some(twilio(20429, 429)),
                K::Transient("rate_limited"),
                "rate_limited",
            ),
            (500, None, K::Transient("server_error"), "server_error"),
            (502, None, K::Transient("server_error"), "server_error"),
            (
                503,
                Some(twilio(20503, 503)),
                K::Transient("server_error"),
                "server_error",
            ),
            (504, None, K::Transient("server_error"), "server_error"),
            (
                408,
                None,
                K::Transient("request_timeout"),
                "request_timeout",
            ),
            (
                400,
                Some(twilio(21211, 400)),
                K::Permanent(Some(21211)),
                "invalid_recipient",
            ),
            (
                400,
                Some(twilio(21610, 400)),
                K::Permanent(Some(21610)),
                "unsubscribed",
            ),
            (
                400,
                Some(twilio(21614, 400)),
                K::Permanent(Some(21614)),
                "not_mobile",
            ),
            (
                400,
                Some(twilio(21408, 400)),
                K::Permanent(Some(21408)),
                "region_not_permitted",
            ),
            (
                400,
                Some(twilio(21612, 400)),
                K::Permanent(Some(21612)),
                "unreachable_recipient",
            ),
            (
                400,
                Some(twilio(21617, 400)),
                K::Permanent(Some(21617)),
                "body_too_long",
            ),
            (
                400,
                Some(twilio(21212, 400)),
                K::Permanent(Some(21212)),
                "invalid_sender",
            ),
            (
                400,
                Some(twilio(12345, 400)),
                K::Permanent(Some(12345)),
                "rejected",
            ),
            (400, None, K::Permanent(None), "rejected"),
            (413, None, K::Permanent(None), "rejected"),
            (422, None, K::Permanent(None), "rejected"),
            (401, Some(twilio(20003, 401)), K::Fault, "unauthorized"),
            (401, None, K::Fault, "unauthorized"),
            (403, None, K::Fault, "forbidden"),
            (400, Some(twilio(20003, 400)), K::Fault, "provider_fault"),
            (400, Some(twilio(20005, 400)), K::Fault, "provider_fault"),
            (
                403,
                Some(twilio(21408, 403)),
                K::Permanent(Some(21408)),
                "region_not_permitted",
            ),
            (404, None, K::Fault, "provider_fault"),
            (404, Some(twilio(20404, 404)), K::Fault, "provider_fault"),
            (405, None, K::Fault, "provider_fault"),
            (301, None, K::Fault, "provider_fault"),
            (302, None, K::Fault, "provider_fault"),
            (200, None, K::Ambiguous, "ambiguous"),
            (
                600,
                None,
                K::Transient("unexpected_status"),
                "unexpected_status",
            ),
        ];
        for (status, error, want, class) in cases {
            let got = classify(status, error.as_ref());
            let kind = match &got {
                SendOutcome::Transient { class, .. } => K::Transient(class),
                SendOutcome::Permanent { code, .. } => K::Permanent(*code),
                SendOutcome::ProviderFault { status: s, .. } => {
                    assert_eq!(*s, status);
                    K::Fault
                }
                SendOutcome::Ambiguous { .. } => K::Ambiguous,
                SendOutcome::Sent { .. } => panic!("classify never says Sent"),
            };
            assert_eq!(kind, want, "status {status} {error:?}");
            assert_eq!(got.error_class(), class, "status {status} {error:?}");
            let detail = got.detail().unwrap();
            assert!(detail.starts_with(&format!("HTTP {status}")), "{detail}");
            if let Some(code) = error.as_ref().and_then(|e| e.code) {
                assert!(detail.contains(&code.to_string()), "{detail}");
            }
        }
    }

    #[test]
    fn only_provider_faults_spare_the_attempt() {
        assert!(!classify(401, None).consumes_attempt());
        assert!(classify(500, None).consumes_attempt());
        assert!(classify(400, None).consumes_attempt());
        assert!(
            SendOutcome::Ambiguous {
                detail: String::new()
            }
            .consumes_attempt()
        );
    }

    #[test]
    fn error_bodies_parse_leniently() {
        let e = ApiError::parse(br#"{"code":21211,"message":"The 'To' number +1 is not a valid phone number.","more_info":"https://www.twilio.com/docs/errors/21211","status":400}"#).unwrap();
        assert_eq!(e.code, Some(21211));
        assert_eq!(e.status, Some(400));
        assert!(e.more_info.unwrap().ends_with("21211"));
        let e = ApiError::parse(br#"{"code":"21610","status":"400"}"#).unwrap();
        assert_eq!((e.code, e.status), (Some(21610), Some(400)));
        let e = ApiError::parse(b"<html>Bad Gateway</html>").unwrap();
        assert_eq!(e.code, None);
        assert_eq!(e.message.as_deref(), Some("<html>Bad Gateway</html>"));
        assert_eq!(ApiError::parse(b""), None);
        assert_eq!(ApiError::parse(b"  \n"), None);
        let long = "x".repeat(5000);
        let e = ApiError::parse(long.as_bytes()).unwrap();
        assert!(e.message.unwrap().chars().count() <= MAX_DETAIL_CHARS + 1);
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(\"<redacted>\")");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{:?}", Secret::default()), "Secret(\"\")");

        let mut cfg = ProviderConfig::default();
        cfg.twilio.auth_token = "hunter2".into();
        cfg.webhook.bearer_token = Some("bearer-hunter3".into());
        let shown = format!("{cfg:?} {cfg:#?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn header_text_keeps_any_correlation_id_valid() {
        assert_eq!(header_text("order-42").to_str().unwrap(), "order-42");
        assert_eq!(header_text("a b%ü").to_str().unwrap(), "a%20b%25%C3%BC");
        assert!(header_text(&"é".repeat(500)).len() <= 600);
        assert_eq!(
            header_text("line\r\nbreak").to_str().unwrap(),
            "line%0D%0Abreak"
        );
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c = ProviderConfig::default();
        assert_eq!(c.kind, ProviderKind::Simulated);
        assert_eq!(c.timeout_ms, 10_000);
        assert_eq!(c.twilio.base_url, "https://api.twilio.com");
        assert_eq!(c.simulated.latency_ms, 50);
        assert_eq!(c.circuit.failure_threshold, 5);
        assert_eq!(c.circuit.open_ms, 30_000);
        let parsed: ProviderConfig = serde_json::from_str(r#"{"kind":"twilio"}"#).unwrap();
        assert_eq!(parsed.kind, ProviderKind::Twilio);
        assert!(serde_json::from_str::<ProviderConfig>(r#"{"bogus":1}"#).is_err());
        assert!(serde_json::from_str::<ProviderConfig>(r#"{"twilio":{"bogus":1}}"#).is_err());
        assert!(serde_json::from_str::<ProviderConfig>(r#"{"kind":"carrier-pigeon"}"#).is_err());
    }

    #[test]
    fn from_config_validates_sections() {
        let mut c = ProviderConfig {
            kind: ProviderKind::Twilio,
            ..ProviderConfig::default()
        };
        assert!(matches!(
            Provider::from_config(&c),
            Err(ProviderError::InvalidConfig(_))
        ));
        c.twilio.account_sid = "AC00000000000000000000000000000000".into();
        c.twilio.auth_token = "t".into();
        assert!(matches!(
            Provider::from_config(&c),
            Err(ProviderError::MissingSender)
        ));
        c.twilio.from = Some("+15550000000".into());
        assert_eq!(
            Provider::from_config(&c).unwrap().kind(),
            ProviderKind::Twilio
        );
        c.timeout_ms = 0;
        assert!(Provider::from_config(&c).is_err());

        let c = ProviderConfig {
            kind: ProviderKind::Webhook,
            ..ProviderConfig::default()
        };
        assert!(Provider::from_config(&c).is_err());

        let mut c = ProviderConfig::default();
        c.simulated.transient_failure_rate = 0.95;
        c.simulated.permanent_failure_rate = 0.1;
        assert!(Provider::from_config(&c).is_err());
        c.simulated.transient_failure_rate = -0.1;
        assert!(Provider::from_config(&c).is_err());
        assert!(Provider::from_config(&ProviderConfig::default()).is_ok());
    }
}
