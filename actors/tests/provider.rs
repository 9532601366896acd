//! The SMS provider layer against real HTTP (wiremock) and on tokio's paused clock.
//!
//! * Twilio: the request is checked against Twilio's own OpenAPI contract
//!   (`tests/fixtures/twilio/messages-create.openapi.json`: path, basic auth, form field names,
//!   required fields, the sender/content conditionals), the `201` body is built from the
//!   contract's message schema, and every kind of answer is classified.
//! * Webhook: headers and JSON body; same classification.
//! * Simulated: a seed reproduces the outcome sequence; the rates hold over 10,000 draws.
//! * Circuit breaker: every transition, with `tokio::time::advance`.
//!
//! The wiremock tests run on real time (real sockets) and never sleep to synchronise; the
//! others run on the paused clock.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use drover_actors::message::OutboundMessage;
use drover_actors::provider::receipt::Receipt;
use drover_actors::provider::{
    AttemptWindow, CircuitBreaker, CircuitConfig, CircuitState, Fetched, Permit, Provider,
    ProviderConfig, ProviderError, ProviderKind, Reconciliation, SendOutcome, SimulatedConfig,
    SimulatedProvider, Transition, TwilioConfig, WebhookConfig,
};
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;
use wiremock::matchers::{
    basic_auth, bearer_token, body_json, header, method, path, query_param, query_param_is_missing,
};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

const SID: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "s3cr3t-auth-token";
const SERVICE: &str = "MG0123456789abcdef0123456789abcdef";
const MESSAGE_SID: &str = "SM0123456789abcdef0123456789abcdef";

fn messages_path() -> String {
    format!("/2010-04-01/Accounts/{SID}/Messages.json")
}

fn msg(from: Option<&str>) -> OutboundMessage {
    OutboundMessage {
        id: Uuid::parse_str("0190c7b2-6f0a-7cc0-8c1e-3a1f2b3c4d5e").unwrap(),
        to: "+15551234567".into(),
        body: "Hello & welcome: 100% 👍".into(),
        from: from.map(Into::into),
        correlation_id: "order-42".into(),
    }
}

fn twilio_config(base_url: &str, from: Option<&str>) -> ProviderConfig {
    ProviderConfig {
        kind: ProviderKind::Twilio,
        timeout_ms: 5_000,
        twilio: TwilioConfig {
            base_url: base_url.into(),
            account_sid: SID.into(),
            auth_token: TOKEN.into(),
            from: from.map(Into::into),
            messaging_service_sid: Some(SERVICE.into()),
            status_callback_url: None,
        },
        ..ProviderConfig::default()
    }
}

fn twilio(base_url: &str, from: Option<&str>) -> Provider {
    Provider::from_config(&twilio_config(base_url, from)).unwrap()
}

/// Twilio's contract, as shipped (an unchanged copy of the team's `shared/twilio/`, MIT
/// licence beside it, vendored so a clean checkout has it).
fn spec() -> Value {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/twilio/messages-create.openapi.json");
    serde_json::from_slice(&std::fs::read(&file).expect("vendored Twilio OpenAPI contract"))
        .expect("the contract is JSON")
}

/// The contract's `POST .../Messages.json` operation.
fn create_operation(spec: &Value) -> &Value {
    &spec["paths"]["/2010-04-01/Accounts/{AccountSid}/Messages.json"]["post"]
}

/// The `201` body: every property of the contract's message schema, values from the
/// contract's `create` example, with our own sid, recipient, sender and text.
fn created_body(spec: &Value, m: &OutboundMessage, from: Option<&str>) -> Value {
    let props = spec["components"]["schemas"]["api.v2010.account.message"]["properties"]
        .as_object()
        .expect("message schema properties");
    let example = &create_operation(spec)["responses"]["201"]["content"]["application/json"]["examples"]
        ["create"]["value"];
    let mut body = serde_json::Map::new();
    for (name, schema) in props {
        let value = match name.as_str() {
            "sid" => json!(MESSAGE_SID),
            "status" => json!("queued"),
            "to" => json!(m.to),
            "from" => json!(from),
            "body" => json!(m.body),
            "account_sid" => json!(SID),
            _ => example.get(name).cloned().unwrap_or(Value::Null),
        };
        if value.is_null() {
            assert_eq!(schema["nullable"], json!(true), "{name} is not nullable");
        }
        body.insert(name.clone(), value);
    }
    assert!(
        body.len() >= 20,
        "the schema lists the message resource's fields"
    );
    Value::Object(body)
}

/// The form fields of a recorded request, decoded, in order.
fn form_of(req: &Request) -> Vec<(String, String)> {
    let body = std::str::from_utf8(&req.body).expect("form bodies are ASCII");
    reqwest::Url::parse(&format!("http://form.invalid/?{body}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Check a recorded form against the contract's request schema: every field a known property
/// (of a matching primitive type), the required ones present, and the `x-twilio` conditionals
/// (`from` or `messaging_service_sid`; `body`, `media_url` or `content_sid`) satisfied.
fn assert_form_matches_contract(spec: &Value, form: &[(String, String)]) {
    let schema = &create_operation(spec)["requestBody"]["content"]["application/x-www-form-urlencoded"]
        ["schema"];
    let props = schema["properties"].as_object().unwrap();
    let names: BTreeSet<&str> = form.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names.len(), form.len(), "no repeated field: {form:?}");
    for (name, value) in form {
        let prop = props
            .get(name)
            .unwrap_or_else(|| panic!("`{name}` is not a field of CreateMessageRequest"));
        match prop["type"].as_str() {
            Some("integer") => assert!(value.parse::<i64>().is_ok(), "{name}={value}"),
            Some("boolean") => assert!(value == "true" || value == "false", "{name}={value}"),
            Some("string") | None => {}
            Some(other) => panic!("{name}: a {other} field is not sent as a plain value"),
        }
        if let Some(pattern) = prop["pattern"].as_str() {
            // The SID patterns are `^XX[0-9a-fA-F]{32}$`.
            let prefix = &pattern[1..3];
            assert!(
                value.starts_with(prefix)
                    && value.len() == 34
                    && value[2..].bytes().all(|b| b.is_ascii_hexdigit()),
                "{name}={value} does not match {pattern}"
            );
        }
    }
    for required in schema["required"].as_array().unwrap() {
        let required = required.as_str().unwrap();
        assert!(
            names.contains(required),
            "required `{required}` missing: {form:?}"
        );
    }
    // x-twilio conditionals name the snake_case parameters.
    let conditionals = create_operation(spec)["x-twilio"]["conditional"]
        .as_array()
        .unwrap();
    assert!(!conditionals.is_empty());
    for group in conditionals {
        let fields: Vec<String> = group
            .as_array()
            .unwrap()
            .iter()
            .map(|s| snake_to_pascal(s.as_str().unwrap()))
            .collect();
        assert!(
            fields.iter().any(|f| names.contains(f.as_str())),
            "one of {fields:?} is required: {form:?}"
        );
    }
}

fn snake_to_pascal(s: &str) -> String {
    s.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// Standard base64 (for the expected `Authorization` header).
fn base64(input: &str) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.as_bytes().chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn header_of<'a>(req: &'a Request, name: &str) -> &'a str {
    req.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Twilio
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn twilio_sends_the_contract_request_and_parses_the_created_message() {
    let spec = spec();
    let server = MockServer::start().await;
    let m = msg(None);
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .and(basic_auth(SID, TOKEN))
        .and(header("X-Correlation-Id", "order-42"))
        .and(header(
            "I-Twilio-Idempotency-Token",
            m.id.to_string().as_str(),
        ))
        .and(header("Content-Type", "application/x-www-form-urlencoded"))
        .respond_with(ResponseTemplate::new(201).set_body_json(created_body(
            &spec,
            &m,
            Some("+15550000000"),
        )))
        .expect(1)
        .mount(&server)
        .await;

    let provider = twilio(&server.uri(), Some("+15550000000"));
    let outcome = provider.send(&m, 1).await;
    assert_eq!(
        outcome,
        SendOutcome::Sent {
            provider_message_id: MESSAGE_SID.into()
        }
    );
    assert_eq!(outcome.error_class(), "sent");

    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    let req = &requests[0];
    assert_eq!(req.method.as_str(), "POST");
    assert_eq!(req.url.path(), messages_path());
    assert_eq!(req.url.query(), None);
    assert_eq!(
        header_of(req, "authorization"),
        format!("Basic {}", base64(&format!("{SID}:{TOKEN}")))
    );
    assert_eq!(header_of(req, "x-correlation-id"), "order-42");
    let form = form_of(req);
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(field("To"), Some("+15551234567"));
    assert_eq!(field("From"), Some("+15550000000"));
    assert_eq!(
        field("MessagingServiceSid"),
        None,
        "From wins over the service"
    );
    assert_eq!(field("Body"), Some(m.body.as_str()));
    assert_eq!(field("Attempt"), Some("1"));
    assert_form_matches_contract(&spec, &form);
    server.verify().await;
}

#[tokio::test]
async fn twilio_the_message_sender_wins_then_from_then_the_messaging_service() {
    let spec = spec();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(messages_path()))
        .respond_with(ResponseTemplate::new(201).set_body_json(created_body(
            &spec,
            &msg(None),
            None,
        )))
        .expect(3)
        .mount(&server)
        .await;

    // Configured without `from`: the messaging service.
    let service_only = twilio(&server.uri(), None);
    assert!(service_only.send(&msg(None), 2).await.is_sent());
    // The message's own sender.
    assert!(
        service_only
            .send(&msg(Some("+15559990000")), 1)
            .await
            .is_sent()
    );
    // Configured `from`.
    let with_from = twilio(&server.uri(), Some("+15550000000"));
    assert!(with_from.send(&msg(None), 1).await.is_sent());

    let requests = server.received_requests().await.unwrap();
    let forms: Vec<_> = requests.iter().map(form_of).collect();
    let sender = |f: &[(String, String)]| {
        f.iter()
            .filter(|(k, _)| k == "From" || k == "MessagingServiceSid")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(
        sender(&forms[0]),
        vec![("MessagingServiceSid".to_string(), SERVICE.to_string())]
    );
    assert!(forms[0].contains(&("Attempt".into(), "2".into())));
    assert_eq!(
        sender(&forms[1]),
        vec![("From".to_string(), "+15559990000".to_string())]
    );
    assert_eq!(
        sender(&forms[2]),
        vec![("From".to_string(), "+15550000000".to_string())]
    );
    for form in &forms {
        assert_form_matches_contract(&spec, form);
    }
}

#[tokio::test]
async fn twilio_created_without_a_sid_still_counts_as_sent() {
    let spec = spec();
    let server = MockServer::start().await;
    let mut body = created_body(&spec, &msg(None), None);
    body["sid"] = Value::Null; // nullable in the contract
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(body))
        .mount(&server)
        .await;
    let m = msg(None);
    assert_eq!(
        twilio(&server.uri(), None).send(&m, 1).await,
        SendOutcome::Sent {
            provider_message_id: m.id.to_string()
        }
    );
}

/// What an error answer must become.
#[derive(Debug, PartialEq)]
enum Want {
    Transient(&'static str),
    Permanent(Option<i64>),
    Fault(u16),
}

fn kind_of(outcome: &SendOutcome) -> Want {
    match outcome {
        SendOutcome::Transient { class, .. } => Want::Transient(class),
        SendOutcome::Permanent { code, .. } => Want::Permanent(*code),
        SendOutcome::ProviderFault { status, .. } => Want::Fault(*status),
        other => panic!("unexpected {other:?}"),
    }
}

fn twilio_error(code: i64, status: u16, message: &str) -> Value {
    json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    })
}

#[tokio::test]
async fn twilio_error_answers_are_classified() {
    let server = MockServer::start().await;
    let provider = twilio(&server.uri(), Some("+15550000000"));
    let cases: Vec<(u16, Option<Value>, Want, &str)> = vec![
        (
            429,
            Some(twilio_error(20429, 429, "Too Many Requests")),
            Want::Transient("rate_limited"),
            "rate_limited",
        ),
        (500, None, Want::Transient("server_error"), "server_error"),
        (
            503,
            Some(twilio_error(20503, 503, "Service Unavailable")),
            Want::Transient("server_error"),
            "server_error",
        ),
        (
            400,
            Some(twilio_error(
                21211,
                400,
                "The 'To' number +15551234567 is not a valid phone number.",
            )),
            Want::Permanent(Some(21211)),
            "invalid_recipient",
        ),
        (
            400,
            Some(twilio_error(
                21610,
                400,
                "Attempt to send to unsubscribed recipient",
            )),
            Want::Permanent(Some(21610)),
            "unsubscribed",
        ),
        (
            400,
            Some(twilio_error(
                21614,
                400,
                "'To' number is not a valid mobile number",
            )),
            Want::Permanent(Some(21614)),
            "not_mobile",
        ),
        (
            400,
            Some(twilio_error(
                21617,
                400,
                "The concatenated message body exceeds the 1600 character limit",
            )),
            Want::Permanent(Some(21617)),
            "body_too_long",
        ),
        (
            401,
            Some(twilio_error(20003, 401, "Authenticate")),
            Want::Fault(401),
            "unauthorized",
        ),
        (403, None, Want::Fault(403), "forbidden"),
        // A configured sender that Twilio refuses is a configuration problem.
        (
            400,
            Some(twilio_error(
                21606,
                400,
                "The From phone number is not a valid, SMS-capable inbound phone number",
            )),
            Want::Fault(400),
            "provider_fault",
        ),
    ];
    for (status, body, want, class) in cases {
        server.reset().await;
        let mut answer = ResponseTemplate::new(status);
        if let Some(body) = &body {
            answer = answer.set_body_json(body);
        }
        Mock::given(method("POST"))
            .and(path(messages_path()))
            .respond_with(answer)
            .expect(1)
            .mount(&server)
            .await;
        let outcome = provider.send(&msg(None), 1).await;
        assert_eq!(
            kind_of(&outcome),
            want,
            "HTTP {status} {body:?}: {outcome:?}"
        );
        assert_eq!(outcome.error_class(), class, "HTTP {status} {body:?}");
        let detail = outcome.detail().unwrap();
        assert!(detail.contains(&status.to_string()), "{detail}");
        if let Some(message) = body.as_ref().and_then(|b| b["message"].as_str()) {
            assert!(detail.contains(message), "{detail}");
        }
        assert!(!detail.contains(TOKEN));
        assert_eq!(outcome.consumes_attempt(), !matches!(want, Want::Fault(_)));
        server.verify().await;
    }

    // The same sender code is the message's own fault when the message named the sender.
    server.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(twilio_error(
            21606,
            400,
            "not SMS-capable",
        )))
        .mount(&server)
        .await;
    let outcome = provider.send(&msg(Some("+15559990000")), 1).await;
    assert_eq!(kind_of(&outcome), Want::Permanent(Some(21606)));
}

#[tokio::test]
async fn twilio_connection_refused_is_transient() {
    // Nothing listens on port 1: the request never left.
    let outcome = twilio("http://127.0.0.1:1", None).send(&msg(None), 1).await;
    assert!(
        matches!(
            outcome,
            SendOutcome::Transient {
                class: "connect",
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(outcome.consumes_attempt());
}

#[tokio::test]
async fn twilio_answer_slower_than_the_timeout_is_ambiguous() {
    let spec = spec();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(created_body(&spec, &msg(None), None))
                .set_delay(Duration::from_secs(30)),
        )
        .mount(&server)
        .await;
    let mut config = twilio_config(&server.uri(), None);
    config.timeout_ms = 300;
    let provider = Provider::from_config(&config).unwrap();
    let started = std::time::Instant::now();
    let outcome = provider.send(&msg(None), 1).await;
    assert!(
        matches!(outcome, SendOutcome::Ambiguous { .. }),
        "{outcome:?}"
    );
    assert_eq!(outcome.error_class(), "ambiguous");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The request did reach the provider.
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn twilio_check_fetches_the_account_with_basic_auth() {
    let server = MockServer::start().await;
    let account = format!("/2010-04-01/Accounts/{SID}.json");
    Mock::given(method("GET"))
        .and(path(account.as_str()))
        .and(basic_auth(SID, TOKEN))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"sid": SID, "status": "active"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let provider = twilio(&server.uri(), None);
    provider.check().await.unwrap();
    server.verify().await;

    server.reset().await;
    Mock::given(method("GET"))
        .and(path(account.as_str()))
        .respond_with(ResponseTemplate::new(401).set_body_json(twilio_error(
            20003,
            401,
            "Authenticate",
        )))
        .mount(&server)
        .await;
    let err = provider.check().await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Rejected { status: 401, .. }),
        "{err:?}"
    );
    assert!(!err.to_string().contains(TOKEN));
    assert!(!format!("{err:?}").contains(TOKEN));

    let err = twilio("http://127.0.0.1:1", None)
        .check()
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Unreachable { .. }), "{err:?}");
}

#[test]
fn the_auth_token_never_shows_in_debug_output() {
    let config = twilio_config("https://api.twilio.com", None);
    let provider = Provider::from_config(&config).unwrap();
    for shown in [
        format!("{config:?}"),
        format!("{provider:?}"),
        format!("{:#?}", config.twilio),
    ] {
        assert!(!shown.contains(TOKEN), "{shown}");
    }
}

// ---------------------------------------------------------------------------------------------
// Webhook
// ---------------------------------------------------------------------------------------------

fn webhook(url: String, token: Option<&str>) -> Provider {
    Provider::from_config(&ProviderConfig {
        kind: ProviderKind::Webhook,
        timeout_ms: 5_000,
        webhook: WebhookConfig {
            url,
            bearer_token: token.map(Into::into),
        },
        ..ProviderConfig::default()
    })
    .unwrap()
}

#[tokio::test]
async fn webhook_posts_json_with_idempotency_and_correlation_headers() {
    let server = MockServer::start().await;
    let m = msg(Some("+15550000000"));
    Mock::given(method("POST"))
        .and(path("/sms"))
        .and(header("Idempotency-Key", m.id.to_string().as_str()))
        .and(header("X-Correlation-Id", "order-42"))
        .and(header("Content-Type", "application/json"))
        .and(bearer_token("wh-token"))
        .and(body_json(json!({
            "id": m.id,
            "to": "+15551234567",
            "body": m.body,
            "from": "+15550000000",
            "correlation_id": "order-42",
            "attempt": 3,
        })))
        .respond_with(ResponseTemplate::new(202).set_body_json(json!({"id": "wh-123"})))
        .expect(1)
        .mount(&server)
        .await;
    let provider = webhook(format!("{}/sms", server.uri()), Some("wh-token"));
    assert_eq!(
        provider.send(&m, 3).await,
        SendOutcome::Sent {
            provider_message_id: "wh-123".into()
        }
    );
    server.verify().await;

    // No `id` in the answer (or no body at all): the message id; `from` null when absent.
    server.reset().await;
    Mock::given(method("POST"))
        .and(body_json(json!({
            "id": m.id,
            "to": "+15551234567",
            "body": m.body,
            "from": null,
            "correlation_id": "order-42",
            "attempt": 1,
        })))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let provider = webhook(format!("{}/sms", server.uri()), None);
    assert_eq!(
        provider.send(&msg(None), 1).await,
        SendOutcome::Sent {
            provider_message_id: m.id.to_string()
        }
    );
    let req = &server.received_requests().await.unwrap()[0];
    assert!(req.headers.get("authorization").is_none());
    server.verify().await;
}

#[tokio::test]
async fn webhook_error_answers_are_classified_like_twilio() {
    let server = MockServer::start().await;
    let provider = webhook(format!("{}/sms", server.uri()), None);
    let cases: Vec<(u16, Option<Value>, Want)> = vec![
        (429, None, Want::Transient("rate_limited")),
        (503, None, Want::Transient("server_error")),
        (
            400,
            Some(twilio_error(21610, 400, "unsubscribed")),
            Want::Permanent(Some(21610)),
        ),
        (422, Some(json!({"message": "no"})), Want::Permanent(None)),
        (401, None, Want::Fault(401)),
        (403, None, Want::Fault(403)),
    ];
    for (status, body, want) in cases {
        server.reset().await;
        let mut answer = ResponseTemplate::new(status);
        if let Some(body) = &body {
            answer = answer.set_body_json(body);
        }
        Mock::given(method("POST"))
            .respond_with(answer)
            .mount(&server)
            .await;
        let outcome = provider.send(&msg(None), 1).await;
        assert_eq!(kind_of(&outcome), want, "HTTP {status}: {outcome:?}");
    }
    let refused = webhook("http://127.0.0.1:1/sms".into(), None)
        .send(&msg(None), 1)
        .await;
    assert_eq!(kind_of(&refused), Want::Transient("connect"));
}

#[tokio::test]
async fn webhook_check_accepts_any_http_answer_but_not_a_refused_connection() {
    let server = MockServer::start().await; // no mocks: it answers 404
    webhook(format!("{}/sms", server.uri()), None)
        .check()
        .await
        .unwrap();
    let err = webhook("http://127.0.0.1:1/sms?key=secret-in-query".into(), None)
        .check()
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Unreachable { .. }), "{err:?}");
    assert!(!err.to_string().contains("secret-in-query"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Simulated
// ---------------------------------------------------------------------------------------------

fn simulated(seed: u64, latency_ms: u64) -> SimulatedProvider {
    SimulatedProvider::new(&SimulatedConfig {
        latency_ms,
        transient_failure_rate: 0.1,
        permanent_failure_rate: 0.01,
        seed,
    })
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn simulated_same_seed_same_outcome_sequence_after_the_configured_latency() {
    let provider = Provider::from_config(&ProviderConfig {
        simulated: SimulatedConfig {
            seed: 7,
            ..SimulatedConfig::default()
        },
        ..ProviderConfig::default()
    })
    .unwrap();
    assert_eq!(provider.kind(), ProviderKind::Simulated);
    provider.check().await.unwrap();
    let started = Instant::now();
    let first = provider.send(&msg(None), 1).await;
    assert_eq!(started.elapsed(), Duration::from_millis(50));

    // The seed fixes the outcomes; the ids of sent messages are random (unique across runs
    // and instances, as a real provider's are), so sequences compare by class.
    let class = |o: SendOutcome| o.error_class().to_string();
    let (a, b, c) = (simulated(7, 50), simulated(7, 0), simulated(8, 0));
    let mut seq_a = vec![class(a.send(&msg(None), 1).await)];
    seq_a.extend((1..500).map(|_| class(a.draw())));
    let seq_b: Vec<_> = (0..500).map(|_| class(b.draw())).collect();
    let seq_c: Vec<_> = (0..500).map(|_| class(c.draw())).collect();
    assert_eq!(seq_a, seq_b);
    assert_eq!(
        seq_a[0],
        class(first),
        "the provider built from config starts the same stream"
    );
    assert_ne!(seq_a, seq_c);
    // Clones share the stream: alternating draws continue one sequence.
    let d = simulated(7, 0);
    let d2 = d.clone();
    let alternating: Vec<_> = (0..500)
        .map(|i| class(if i % 2 == 0 { d.draw() } else { d2.draw() }))
        .collect();
    assert_eq!(alternating, seq_b);
}

#[test]
fn simulated_rates_are_roughly_honoured_over_10000_draws() {
    let provider = simulated(0xC0FFEE, 0);
    let (mut sent, mut transient, mut permanent) = (0u32, 0u32, 0u32);
    let mut ids = BTreeSet::new();
    for _ in 0..10_000 {
        match provider.draw() {
            SendOutcome::Sent {
                provider_message_id,
            } => {
                assert!(provider_message_id.starts_with("SIM"));
                assert_eq!(provider_message_id.len(), 3 + 32);
                assert!(
                    provider_message_id[3..]
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit())
                );
                ids.insert(provider_message_id);
                sent += 1;
            }
            SendOutcome::Transient { .. } => transient += 1,
            SendOutcome::Permanent { .. } => permanent += 1,
            other => panic!("the simulation does not produce {other:?}"),
        }
    }
    assert_eq!(sent + transient + permanent, 10_000);
    // Expected 1000 ± 30 (σ) and 100 ± 10: the bounds are > 4σ wide.
    assert!((850..=1150).contains(&transient), "transient {transient}");
    assert!((60..=140).contains(&permanent), "permanent {permanent}");
    assert_eq!(ids.len() as u32, sent, "provider ids are unique");

    let never = SimulatedProvider::new(&SimulatedConfig {
        transient_failure_rate: 0.0,
        permanent_failure_rate: 0.0,
        ..SimulatedConfig::default()
    })
    .unwrap();
    assert!((0..1000).all(|_| never.draw().is_sent()));
}

// ---------------------------------------------------------------------------------------------
// Circuit breaker
// ---------------------------------------------------------------------------------------------

fn transient() -> SendOutcome {
    SendOutcome::Transient {
        class: "server_error",
        detail: "HTTP 503".into(),
    }
}

fn sent() -> SendOutcome {
    SendOutcome::Sent {
        provider_message_id: "SM1".into(),
    }
}

fn fault() -> SendOutcome {
    SendOutcome::ProviderFault {
        status: 401,
        detail: "HTTP 401".into(),
    }
}

fn breaker(threshold: u32) -> CircuitBreaker {
    CircuitBreaker::new(&CircuitConfig {
        failure_threshold: threshold,
        open_ms: 30_000,
    })
}

const OPEN: Duration = Duration::from_millis(30_000);

#[tokio::test(start_paused = true)]
async fn circuit_opens_after_consecutive_failures_probes_once_and_closes() {
    let mut cb = breaker(3);
    assert_eq!(cb.check(), Permit::Allowed);
    // Two failures, then a success: the count starts again.
    assert_eq!(cb.on_outcome(&transient()), None);
    assert_eq!(cb.on_outcome(&transient()), None);
    assert_eq!(
        cb.state(),
        CircuitState::Closed {
            consecutive_failures: 2
        }
    );
    assert_eq!(cb.on_outcome(&sent()), None);
    // A permanent rejection proves the provider answers: a success for the circuit.
    assert_eq!(cb.on_outcome(&transient()), None);
    assert_eq!(cb.on_outcome(&transient()), None);
    let permanent = SendOutcome::Permanent {
        code: Some(21211),
        detail: "HTTP 400".into(),
    };
    assert_eq!(cb.on_outcome(&permanent), None);
    assert_eq!(cb.check(), Permit::Allowed);

    // Three in a row (ambiguous counts too) open it.
    assert_eq!(cb.on_outcome(&transient()), None);
    assert_eq!(
        cb.on_outcome(&SendOutcome::Ambiguous {
            detail: "timeout".into()
        }),
        None
    );
    let opened = Instant::now();
    assert_eq!(cb.on_outcome(&transient()), Some(Transition::Opened));
    assert!(!cb.is_closed());
    assert_eq!(cb.retry_at(), Some(opened + OPEN));
    assert_eq!(
        cb.check(),
        Permit::Rejected {
            retry_at: opened + OPEN
        }
    );
    match cb.state() {
        CircuitState::Open {
            opened_at_ms,
            retry_at_ms,
            reason,
        } => {
            assert_eq!(retry_at_ms - opened_at_ms, 30_000);
            assert_eq!(reason, "server_error");
        }
        other => panic!("{other:?}"),
    }

    tokio::time::advance(OPEN - Duration::from_millis(1)).await;
    assert_eq!(cb.poll(), None);
    assert_eq!(
        cb.check(),
        Permit::Rejected {
            retry_at: opened + OPEN
        }
    );

    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(cb.poll(), Some(Transition::HalfOpened));
    assert_eq!(cb.poll(), None);
    assert!(matches!(
        cb.state(),
        CircuitState::HalfOpen {
            probe_in_flight: false,
            ..
        }
    ));
    // Exactly one probe.
    assert_eq!(cb.check(), Permit::Probe);
    assert!(matches!(cb.check(), Permit::Rejected { .. }));
    assert!(matches!(
        cb.state(),
        CircuitState::HalfOpen {
            probe_in_flight: true,
            ..
        }
    ));
    assert_eq!(cb.on_outcome(&sent()), Some(Transition::Closed));
    assert!(cb.is_closed());
    assert_eq!(cb.check(), Permit::Allowed);
    assert_eq!(
        cb.state(),
        CircuitState::Closed {
            consecutive_failures: 0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn circuit_provider_fault_opens_at_once_and_a_failed_probe_reopens() {
    let mut cb = breaker(5);
    assert_eq!(cb.on_outcome(&fault()), Some(Transition::Opened));
    assert!(
        matches!(cb.state(), CircuitState::Open { ref reason, .. } if reason == "unauthorized")
    );
    // Late outcomes of requests sent before it opened change nothing.
    assert_eq!(cb.on_outcome(&sent()), None);
    assert_eq!(cb.on_outcome(&transient()), None);
    assert!(matches!(cb.check(), Permit::Rejected { .. }));

    tokio::time::advance(OPEN).await;
    // `check` moves to half-open by itself and hands out the probe.
    assert_eq!(cb.check(), Permit::Probe);
    let reopened = Instant::now();
    assert_eq!(cb.on_outcome(&transient()), Some(Transition::Opened));
    assert_eq!(
        cb.check(),
        Permit::Rejected {
            retry_at: reopened + OPEN
        }
    );

    tokio::time::advance(OPEN).await;
    assert_eq!(cb.check(), Permit::Probe);
    assert_eq!(cb.on_outcome(&fault()), Some(Transition::Opened));
    tokio::time::advance(OPEN).await;
    assert_eq!(cb.check(), Permit::Probe);
    assert_eq!(cb.on_outcome(&sent()), Some(Transition::Closed));
}

#[tokio::test(start_paused = true)]
async fn circuit_a_probe_never_reported_is_replaced_after_open_ms() {
    let mut cb = breaker(1);
    assert_eq!(cb.on_outcome(&transient()), Some(Transition::Opened));
    tokio::time::advance(OPEN).await;
    assert_eq!(cb.check(), Permit::Probe);
    let probe_at = Instant::now();
    tokio::time::advance(OPEN / 2).await;
    assert_eq!(
        cb.check(),
        Permit::Rejected {
            retry_at: probe_at + OPEN
        }
    );
    tokio::time::advance(OPEN / 2).await;
    assert_eq!(
        cb.check(),
        Permit::Probe,
        "the lost probe does not wedge the breaker"
    );
}

#[tokio::test(start_paused = true)]
async fn circuit_state_serializes_for_status_endpoints() {
    let mut cb = breaker(1);
    assert_eq!(
        serde_json::to_value(cb.state()).unwrap(),
        json!({"state": "closed", "consecutive_failures": 0})
    );
    cb.on_outcome(&fault());
    let open = serde_json::to_value(cb.state()).unwrap();
    assert_eq!(open["state"], "open");
    assert_eq!(open["reason"], "unauthorized");
    let opened_at = open["opened_at_ms"].as_i64().unwrap();
    assert_eq!(open["retry_at_ms"].as_i64().unwrap() - opened_at, 30_000);
    // Unix milliseconds: after 2020.
    assert!(opened_at > 1_577_836_800_000, "{opened_at}");

    tokio::time::advance(OPEN).await;
    let half = serde_json::to_value(cb.state()).unwrap();
    assert_eq!(half["state"], "half_open");
    assert_eq!(half["probe_in_flight"], false);
    assert_eq!(half["opened_at_ms"].as_i64().unwrap(), opened_at);
    assert_eq!(
        serde_json::to_value(Transition::HalfOpened).unwrap(),
        json!("half_opened")
    );
}

#[test]
fn circuit_zero_threshold_counts_as_one() {
    let mut cb = CircuitBreaker::new(&CircuitConfig {
        failure_threshold: 0,
        open_ms: 1,
    });
    assert_eq!(cb.on_outcome(&transient()), Some(Transition::Opened));
}

// ---------------------------------------------------------------------------------------------
// Twilio lookup (reconciliation of an ambiguous attempt)
// ---------------------------------------------------------------------------------------------

/// Fri, 04 Dec 2026 10:00:00 UTC: when the earlier attempt started.
const STARTED_MS: i64 = 1_796_378_400_000;

/// The query parameters of the contract's `GET .../Messages.json` (`ListMessage`).
fn list_parameters() -> BTreeSet<String> {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/twilio/messages.openapi.json");
    let spec: Value = serde_json::from_slice(&std::fs::read(&file).expect("vendored contract"))
        .expect("the contract is JSON");
    let op = &spec["paths"]["/2010-04-01/Accounts/{AccountSid}/Messages.json"]["get"];
    assert_eq!(op["operationId"], "ListMessage");
    op["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter(|p| p["in"] == "query")
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

/// A listed message resource (fields of the contract's message schema).
fn listed(sid: &str, m: &OutboundMessage, body: &str, date_created: &str) -> Value {
    json!({
        "sid": sid,
        "account_sid": SID,
        "messaging_service_sid": SERVICE,
        "to": m.to,
        "from": "+15550000000",
        "body": body,
        "status": "sent",
        "direction": "outbound-api",
        "date_created": date_created,
        "date_sent": date_created,
        "num_segments": "1",
    })
}

fn page(messages: Vec<Value>, next: Option<String>) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "messages": messages,
        "next_page_uri": next,
        "page": 0,
        "page_size": 50,
        "start": 0,
        "end": 1,
        "uri": messages_path(),
        "first_page_uri": messages_path(),
        "previous_page_uri": null,
    }))
}

fn next_page(token: &str) -> String {
    format!("{}?PageSize=50&Page=1&PageToken={token}", messages_path())
}

#[tokio::test]
async fn twilio_lookup_follows_the_pages_and_finds_the_attempt() {
    let server = MockServer::start().await;
    let m = msg(None);
    let at = "Fri, 04 Dec 2026 10:00:02 +0000";
    Mock::given(method("GET"))
        .and(path(messages_path()))
        .and(basic_auth(SID, TOKEN))
        .and(query_param("To", m.to.as_str()))
        .and(query_param("DateSent>", "2026-12-04"))
        .and(query_param_is_missing("PageToken"))
        .respond_with(page(
            vec![listed("SMother", &m, "another text", at)],
            Some(next_page("PA1")),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(messages_path()))
        .and(basic_auth(SID, TOKEN))
        .and(query_param("PageToken", "PA1"))
        .respond_with(page(vec![listed(MESSAGE_SID, &m, &m.body, at)], None))
        .expect(1)
        .mount(&server)
        .await;
    let found = twilio(&server.uri(), None)
        .reconcile(&m, AttemptWindow::of_attempt(STARTED_MS, 5_000))
        .await;
    assert_eq!(
        found,
        Reconciliation::Found {
            provider_message_id: MESSAGE_SID.into()
        }
    );
    let allowed = list_parameters();
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    for req in &requests {
        for (name, _) in req.url.query_pairs() {
            assert!(
                allowed.contains(name.as_ref()),
                "`{name}` is not a ListMessage parameter"
            );
        }
    }
    // Sent through the messaging service: no `From` filter (the service picks the number).
    assert!(!requests[0].url.query_pairs().any(|(k, _)| k == "From"));
}

#[tokio::test]
async fn twilio_lookup_filters_by_the_configured_number() {
    let server = MockServer::start().await;
    let m = msg(None);
    Mock::given(method("GET"))
        .and(path(messages_path()))
        .and(query_param("From", "+15550000000"))
        .respond_with(page(vec![], None))
        .expect(1)
        .mount(&server)
        .await;
    let found = twilio(&server.uri(), Some("+15550000000"))
        .reconcile(&m, AttemptWindow::of_attempt(STARTED_MS, 5_000))
        .await;
    assert_eq!(found, Reconciliation::NotFound);
}

#[tokio::test]
async fn twilio_lookup_without_an_answer_fails_and_is_bounded() {
    let m = msg(None);
    let window = AttemptWindow::of_attempt(STARTED_MS, 5_000);
    // An error answer.
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let failed = twilio(&server.uri(), None).reconcile(&m, window).await;
    assert!(
        matches!(failed, Reconciliation::Failed(ref e) if e.contains("500")),
        "{failed:?}"
    );
    // Nobody listening.
    let failed = twilio("http://127.0.0.1:1", None)
        .reconcile(&m, window)
        .await;
    assert!(matches!(failed, Reconciliation::Failed(_)), "{failed:?}");
    // Pages without end: at most LOOKUP_PAGES requests, then a failure (send as without).
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(page(vec![], Some(next_page("PAnext"))))
        .mount(&server)
        .await;
    let failed = twilio(&server.uri(), None).reconcile(&m, window).await;
    assert!(matches!(failed, Reconciliation::Failed(_)), "{failed:?}");
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        drover_actors::provider::twilio::LOOKUP_PAGES
    );
}

#[tokio::test]
async fn only_twilio_is_asked() {
    let window = AttemptWindow::of_attempt(STARTED_MS, 5_000);
    let simulated = Provider::from_config(&ProviderConfig {
        kind: ProviderKind::Simulated,
        ..ProviderConfig::default()
    })
    .unwrap();
    assert_eq!(
        simulated.reconcile(&msg(None), window).await,
        Reconciliation::Unsupported
    );
    let webhook = Provider::from_config(&ProviderConfig {
        kind: ProviderKind::Webhook,
        webhook: WebhookConfig {
            url: "http://127.0.0.1:1/sms".into(),
            ..WebhookConfig::default()
        },
        ..ProviderConfig::default()
    })
    .unwrap();
    assert_eq!(
        webhook.reconcile(&msg(None), window).await,
        Reconciliation::Unsupported
    );
}

/// With receipts on, every send names the callback as `StatusCallback`, a field of the
/// contract's `CreateMessageRequest`.
#[test]
fn the_status_callback_goes_with_every_send() {
    let mut config = twilio_config("http://127.0.0.1:1", None);
    config.twilio.status_callback_url =
        Some("https://sms.example.com/providers/twilio/status".into());
    let client = drover_actors::provider::TwilioClient::new(&config.twilio, config.timeout())
        .expect("valid configuration");
    let form: Vec<(String, String)> = client
        .form(&msg(None), 1)
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_form_matches_contract(&spec(), &form);
    assert_eq!(
        form.last(),
        Some(&(
            "StatusCallback".to_string(),
            "https://sms.example.com/providers/twilio/status".to_string()
        ))
    );
    config.twilio.status_callback_url = Some("ftp://nope".into());
    assert!(drover_actors::provider::TwilioClient::new(&config.twilio, config.timeout()).is_err());
}

// ---------------------------------------------------------------------------------------------
// Twilio FetchMessage (one message's current status)
// ---------------------------------------------------------------------------------------------

/// The contract's `FetchMessage` operation: its path template and method.
fn fetch_operation() -> Value {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/twilio/messages.openapi.json");
    let spec: Value = serde_json::from_slice(&std::fs::read(&file).expect("vendored contract"))
        .expect("the contract is JSON");
    let op = spec["paths"]["/2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json"]["get"].clone();
    assert_eq!(op["operationId"], "FetchMessage");
    op
}

#[tokio::test]
async fn twilio_fetch_reads_the_status_at_the_contract_path() {
    let op = fetch_operation();
    let in_path: BTreeSet<String> = op["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter(|p| p["in"] == "path")
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        in_path,
        BTreeSet::from(["AccountSid".to_string(), "Sid".to_string()])
    );
    let server = MockServer::start().await;
    let fetch_path = format!("/2010-04-01/Accounts/{SID}/Messages/{MESSAGE_SID}.json");
    let m = msg(None);
    let mut resource = listed(MESSAGE_SID, &m, &m.body, "Fri, 04 Dec 2026 10:00:02 +0000");
    resource["status"] = json!("undelivered");
    resource["error_code"] = json!(30003);
    Mock::given(method("GET"))
        .and(path(fetch_path.as_str()))
        .and(basic_auth(SID, TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_json(resource))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path(format!(
            "/2010-04-01/Accounts/{SID}/Messages/SMunknown.json"
        )))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({
            "code": 20404, "message": "not found", "status": 404
        })))
        .mount(&server)
        .await;
    let p = twilio(&server.uri(), None);
    assert_eq!(
        p.fetch(MESSAGE_SID).await,
        Fetched::Known(Receipt {
            provider_message_id: MESSAGE_SID.into(),
            status: "undelivered".into(),
            error_code: Some(30003),
        })
    );
    assert_eq!(p.fetch("SMunknown").await, Fetched::NotFound);
    // A stored value that is not a sid never becomes a path.
    assert!(matches!(p.fetch("../../x").await, Fetched::Failed(_)));
    assert!(matches!(p.fetch("").await, Fetched::Failed(_)));
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2, "the bad sids made no request");
    // Nobody listening, and providers that cannot be asked.
    assert!(matches!(
        twilio("http://127.0.0.1:1", None).fetch(MESSAGE_SID).await,
        Fetched::Failed(_)
    ));
    let simulated = Provider::from_config(&ProviderConfig::default()).unwrap();
    assert_eq!(simulated.fetch(MESSAGE_SID).await, Fetched::Unsupported);
}

// ---------------------------------------------------------------------------------------------
// Vonage (Nexmo) SMS API
// ---------------------------------------------------------------------------------------------

fn vonage(base_url: &str) -> Provider {
    Provider::from_config(&ProviderConfig {
        kind: ProviderKind::Vonage,
        timeout_ms: 2_000,
        vonage: drover_actors::provider::VonageConfig {
            base_url: base_url.into(),
            api_key: "abcd1234".into(),
            api_secret: "vonage-s3cret".into(),
            from: "Acme".into(),
        },
        ..ProviderConfig::default()
    })
    .expect("valid vonage configuration")
}

fn vonage_answer(status: &str, extra: Value) -> ResponseTemplate {
    let mut part = json!({ "to": "15551234567", "status": status });
    for (k, v) in extra.as_object().unwrap() {
        part[k] = v.clone();
    }
    ResponseTemplate::new(200).set_body_json(json!({ "message-count": "1", "messages": [part] }))
}

#[tokio::test]
async fn vonage_sends_its_form_and_reads_each_status() {
    let server = MockServer::start().await;
    let m = msg(None);
    Mock::given(method("POST"))
        .and(path("/sms/json"))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .respond_with(vonage_answer(
            "0",
            json!({ "message-id": "0A0000001234ABCD", "remaining-balance": "3.14", "message-price": "0.0333", "network": "310260" }),
        ))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let p = vonage(&server.uri());
    assert_eq!(
        p.send(&m, 1).await,
        SendOutcome::Sent {
            provider_message_id: "0A0000001234ABCD".into()
        }
    );
    let req = &server.received_requests().await.unwrap()[0];
    let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&req.body)
        .into_owned()
        .collect();
    assert_eq!(form["api_key"], "abcd1234");
    assert_eq!(form["api_secret"], "vonage-s3cret");
    assert_eq!(form["from"], "Acme");
    assert_eq!(
        form["to"],
        m.to.trim_start_matches('+'),
        "E.164 without its +"
    );
    assert_eq!(form["text"], m.body);
    assert_eq!(form["client-ref"], m.id.to_string());
    assert_eq!(
        req.headers.get("x-correlation-id").unwrap(),
        m.correlation_id.as_str()
    );

    // Refusals, one per class, each in a 200 as Vonage answers them.
    for (status, text, class) in [
        ("1", "Throttled", "transient"),
        ("3", "Invalid to param", "permanent"),
        ("4", "Bad Credentials", "fault"),
        ("9", "Partner quota exceeded", "fault"),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(vonage_answer(status, json!({ "error-text": text })))
            .mount(&server)
            .await;
        let got = vonage(&server.uri()).send(&m, 1).await;
        let kind = match &got {
            SendOutcome::Transient { .. } => "transient",
            SendOutcome::Permanent { .. } => "permanent",
            SendOutcome::ProviderFault { .. } => "fault",
            _ => "other",
        };
        assert_eq!(kind, class, "status {status}: {got:?}");
        assert!(got.detail().unwrap().contains(text), "{got:?}");
    }
    // A 5xx from the HTTP layer is transient; nobody listening is a connect error.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    assert!(matches!(
        vonage(&server.uri()).send(&m, 1).await,
        SendOutcome::Transient { .. }
    ));
    assert!(matches!(
        vonage("http://127.0.0.1:1").send(&m, 1).await,
        SendOutcome::Transient {
            class: "connect",
            ..
        }
    ));
    // Vonage cannot be asked about an earlier attempt.
    assert_eq!(
        vonage(&server.uri())
            .reconcile(&m, AttemptWindow::of_attempt(STARTED_MS, 5_000))
            .await,
        Reconciliation::Unsupported
    );
}
