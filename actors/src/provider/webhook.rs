//! A provider of your own behind a URL: drover POSTs one JSON document per attempt.
//!
//! ```text
//! POST {url}
//! Content-Type: application/json
//! Idempotency-Key: <message id>
//! X-Correlation-Id: <correlation id>
//! Authorization: Bearer <bearer_token>          (when configured)
//!
//! {"id":"0190c7b2-…","to":"+15551234567","body":"hello","from":null,"correlation_id":"order-42","attempt":1}
//! ```
//!
//! Any 2xx is `Sent`; the provider message id is the answer's JSON `id` field (a string or a
//! number) when there is one, else the message id. Anything else is classified like a Twilio
//! answer ([`classify`](super::classify)): an error body shaped `{"code", "message", ...}` is
//! understood.

use std::time::Duration;

use reqwest::Url;
use reqwest::header::ACCEPT;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    CORRELATION_HEADER, ProviderError, Secret, SendOutcome, error_outcome, header_text,
    http_client, redact_url, redacted, transport_outcome,
};
use crate::message::OutboundMessage;

/// The idempotency header of webhook requests (its value is the message id).
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// `[provider.webhook]`. `Debug` redacts `bearer_token` (and the URL's user info and query).
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// The http(s) URL that receives one JSON POST per send attempt. Required when
    /// `kind = "webhook"`.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>` when set. Secret: never logged, redacted in
    /// `Debug`.
    pub bearer_token: Option<String>,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = Url::parse(&self.url)
            .map(|u| redact_url(&u))
            .unwrap_or_else(|_| self.url.clone());
        f.debug_struct("WebhookConfig")
            .field("url", &url)
            .field("bearer_token", &self.bearer_token.as_deref().map(redacted))
            .finish()
    }
}

/// The JSON document POSTed for one attempt.
#[derive(Debug, Serialize)]
struct Payload<'a> {
    id: Uuid,
    to: &'a str,
    body: &'a str,
    from: Option<&'a str>,
    correlation_id: &'a str,
    attempt: u32,
}

/// A client of a JSON webhook provider. Cheap to clone.
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    url: Url,
    bearer_token: Option<Secret>,
}

impl std::fmt::Debug for WebhookClient {
    /// The URL without user info or query string (either may hold a credential).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookClient")
            .field("url", &redact_url(&self.url))
            .field("bearer_token", &self.bearer_token)
            .finish_non_exhaustive()
    }
}

impl WebhookClient {
    /// Validate `config` and build the client; `timeout` bounds every request.
    pub fn new(config: &WebhookConfig, timeout: Duration) -> Result<WebhookClient, ProviderError> {
        let url = config.url.trim();
        if url.is_empty() {
            return Err(ProviderError::InvalidConfig(
                "provider.webhook.url is empty".into(),
            ));
        }
        let url = Url::parse(url)
            .map_err(|e| ProviderError::InvalidConfig(format!("provider.webhook.url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ProviderError::InvalidConfig(format!(
                "provider.webhook.url must be an http(s) URL, not {}",
                redact_url(&url)
            )));
        }
        Ok(WebhookClient {
            http: http_client(timeout)?,
            url,
            bearer_token: config
                .bearer_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(Secret::new),
        })
    }

    fn request(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.bearer_token {
            Some(token) => builder.bearer_auth(token.expose()),
            None => builder,
        }
    }

    /// Send one message (see the module documentation for the request).
    pub async fn send(&self, msg: &OutboundMessage, attempt: u32) -> SendOutcome {
        let payload = Payload {
            id: msg.id,
            to: &msg.to,
            body: &msg.body,
            from: msg.from.as_deref(),
            correlation_id: &msg.correlation_id,
            attempt,
        };
        let result = self
            .request(self.http.post(self.url.clone()))
            .header(ACCEPT, "application/json")
            .header(IDEMPOTENCY_KEY_HEADER, msg.id.to_string())
            .header(CORRELATION_HEADER, header_text(&msg.correlation_id))
            .json(&payload)
            .send()
            .await;
        let resp = match result {
            Ok(resp) => resp,
            Err(e) => return transport_outcome(e),
        };
        if !resp.status().is_success() {
            return error_outcome(resp).await;
        }
        // Accepted: the body only matters for the provider's id.
        let id = resp
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| match v.get("id") {
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                _ => None,
            });
        SendOutcome::Sent {
            provider_message_id: id.unwrap_or_else(|| msg.id.to_string()),
        }
    }

    /// Any HTTP answer to a `HEAD {url}` (even 404 or 405) proves the URL reachable; no
    /// answer (connection refused, DNS, TLS, timeout) does not.
    pub async fn check(&self) -> Result<(), ProviderError> {
        super::answers(self.request(self.http.head(self.url.clone())), &self.url).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated_and_secrets_hidden() {
        let t = Duration::from_secs(1);
        assert!(WebhookClient::new(&WebhookConfig::default(), t).is_err());
        for bad in ["nope", "ftp://example.com/x"] {
            let c = WebhookConfig {
                url: bad.into(),
                bearer_token: None,
            };
            assert!(matches!(
                WebhookClient::new(&c, t),
                Err(ProviderError::InvalidConfig(_))
            ));
        }
        let c = WebhookConfig {
            url: "https://sms.example.com/send?key=query-secret".into(),
            bearer_token: Some("bearer-secret".into()),
        };
        let client = WebhookClient::new(&c, t).unwrap();
        let shown = format!("{client:?}");
        assert!(!shown.contains("bearer-secret"), "{shown}");
        assert!(!shown.contains("query-secret"), "{shown}");
        assert!(!format!("{c:?}").contains("bearer-secret"));
        assert!(!format!("{c:?}").contains("query-secret"));
        assert_eq!(redact_url(&client.url), "https://sms.example.com");
    }
}
