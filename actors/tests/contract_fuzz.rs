//! Property tests over the message contract and the set-aside builder: arbitrary bytes and
//! arbitrary AMQP properties and headers never panic, every verdict is bounded, and whatever
//! drover would publish about a message (its work-queue body, its failed-queue copy, its
//! invalid-queue copy) fits AMQP's limits. Bounded to a few hundred cases per property so CI stays fast;
//! `PROPTEST_CASES` raises it for a longer run.

use std::collections::BTreeMap;

use drover_actors::broker::Outgoing;
use drover_actors::message::{
    AMQP_SHORT_STRING_MAX, Envelope, MAX_REASON_BYTES, MessageConfig, parse, salvage_id,
    sms_segments,
};
use drover_actors::pipeline::set_aside::{Received, failed_headers, invalid_copy, properties_size};
use proptest::prelude::*;

/// The properties of one frame RabbitMQ accepts by default, with room for the frame's own
/// header.
const FRAME_BUDGET: usize = 131_072 - 1_024;

fn config() -> MessageConfig {
    MessageConfig {
        max_payload_bytes: 4_096,
        ..MessageConfig::default()
    }
}

/// Text biased towards what breaks things: control characters, quotes, non-BMP.
fn nasty_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            any::<char>(),
            Just('\0'),
            Just('\u{1b}'),
            Just('\u{85}'),
            Just('"'),
            Just('\\'),
            Just('+'),
            "[0-9]".prop_map(|s| s.chars().next().unwrap()),
            Just('😀'),
        ],
        0..max,
    )
    .prop_map(|v| v.into_iter().collect())
}

/// JSON shaped like a message, with random types and contents in every field.
fn message_like() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        nasty_text(300).prop_map(serde_json::Value::String),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        Just(serde_json::Value::Null),
        prop::collection::vec(nasty_text(5), 0..3).prop_map(|v| serde_json::json!(v)),
        Just(serde_json::json!("+15551234567")),
    ];
    (
        prop::collection::btree_map(
            prop_oneof![
                Just("id".to_owned()),
                Just("to".to_owned()),
                Just("body".to_owned()),
                Just("from".to_owned()),
                Just("correlation_id".to_owned()),
                nasty_text(10),
            ],
            field,
            0..6,
        ),
        any::<bool>(),
    )
        .prop_map(|(m, nul_raw)| {
            let mut b = serde_json::to_vec(&m).unwrap();
            if nul_raw && !b.is_empty() {
                b.insert(b.len() / 2, 0);
            }
            b
        })
}

fn headers() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(nasty_text(300), nasty_text(2_500), 0..5)
}

fn check(bytes: &[u8], envelope: &Envelope, hs: &BTreeMap<String, String>) {
    let cfg = config();
    match parse(bytes, envelope, &cfg) {
        Ok(m) => {
            // What drover publishes of a valid message fits AMQP.
            assert!(m.correlation_id.len() <= AMQP_SHORT_STRING_MAX);
            assert!(!m.correlation_id.contains('\0'));
            assert!(!m.to.chars().any(char::is_control));
            let work = Outgoing::new(m.to_json())
                .with_message_id(m.id.to_string())
                .with_correlation_id(m.correlation_id.clone());
            assert_eq!(work.validate(), Ok(()));
            let failed = Outgoing {
                headers: failed_headers("permanent", &"e".repeat(10_000), 3),
                ..work
            };
            assert_eq!(failed.validate(), Ok(()));
            assert!(properties_size(&failed) < FRAME_BUDGET);
            assert!(sms_segments(&m.body).1 >= 1);
        }
        Err(invalid) => {
            let reason = invalid.reason();
            assert!(reason.len() <= MAX_REASON_BYTES);
            assert!(!invalid.class().is_empty());
            let _ = salvage_id(bytes, envelope, &cfg);
            let copy = invalid_copy(
                Received {
                    body: bytes,
                    message_id: envelope.message_id.as_deref(),
                    correlation_id: envelope.correlation_id.as_deref(),
                    headers: hs,
                },
                invalid.class(),
                &reason,
                cfg.max_payload_bytes,
            );
            assert_eq!(copy.validate(), Ok(()), "{copy:?}");
            assert!(copy.body.len() <= cfg.max_payload_bytes);
            assert!(properties_size(&copy) < FRAME_BUDGET);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000)
    ))]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..5_000),
        mid in prop::option::of(nasty_text(300)),
        cid in prop::option::of(nasty_text(300)),
        hs in headers(),
    ) {
        check(&bytes, &Envelope { message_id: mid, correlation_id: cid }, &hs);
    }

    #[test]
    fn message_shaped_json_never_panics(
        bytes in message_like(),
        mid in prop::option::of(nasty_text(80)),
        cid in prop::option::of(nasty_text(300)),
        hs in headers(),
    ) {
        check(&bytes, &Envelope { message_id: mid, correlation_id: cid }, &hs);
    }

    #[test]
    fn deep_or_large_input_is_refused_cheaply(depth in 0usize..20_000, pad in 0usize..10_000) {
        let mut b = "[".repeat(depth).into_bytes();
        b.extend(std::iter::repeat_n(b' ', pad));
        b.extend("]".repeat(depth).into_bytes());
        check(&b, &Envelope::default(), &BTreeMap::new());
    }
}
