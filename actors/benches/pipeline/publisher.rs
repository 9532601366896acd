//! The pipeline bench: the publisher.

use super::*;

pub(crate) fn message_body(marks: &Marks, i: usize) -> String {
    format!(
        r#"{{"id":"{}","to":"{TO}","body":"bench message {i}","correlation_id":"bench-{i}"}}"#,
        marks.id(i)
    )
}

pub(crate) struct Published {
    pub(crate) first: Instant,
    pub(crate) confirmed: Instant,
}

/// Publish every message through its own connection, confirms on, at most
/// [`PUBLISH_WINDOW`] unconfirmed.
pub(crate) async fn publish_all(
    url: String,
    names: Names,
    marks: Arc<Marks>,
    clock: Clock,
    rate: Option<f64>,
    deadline: Instant,
) -> BenchResult<Published> {
    let n = marks.hits.len();
    let conn = Connection::connect(
        &url,
        ConnectionProperties::default().with_connection_name("drover-bench-publisher".into()),
    )
    .await
    .map_err(|e| err("publisher connect")(&e))?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| err("publisher channel")(&e))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| err("confirm.select")(&e))?;
    let props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let check = |c: lapin::Result<Confirmation>| match c {
        Ok(Confirmation::Ack(None)) => Ok(()),
        other => Err(format!("publish not confirmed: {other:?}")),
    };
    let mut pending = FuturesUnordered::new();
    let first = Instant::now();
    for i in 0..n {
        if i % 256 == 0 && Instant::now() > deadline {
            return Err(format!(
                "publishing aborted after {i} of {n} messages: time limit"
            ));
        }
        if let Some(rate) = rate {
            let due = first + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let body = message_body(&marks, i);
        marks.publish_ms[i].store(clock.now_ms(), Ordering::Relaxed);
        marks.publish_ns[i].store(marks.now_ns(), Ordering::Relaxed);
        let confirm = channel
            .basic_publish(
                names.exchange.as_str().into(),
                names.work.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props.clone(),
            )
            .await
            .map_err(|e| err("basic.publish")(&e))?;
        pending.push(confirm);
        while pending.len() >= PUBLISH_WINDOW {
            match tokio::time::timeout_at(deadline.into(), pending.next()).await {
                Ok(Some(c)) => check(c)?,
                Ok(None) => break,
                Err(_) => return Err("publish confirms timed out".into()),
            }
        }
    }
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline.into(), pending.next()).await {
            Ok(Some(c)) => check(c)?,
            Ok(None) => break,
            Err(_) => return Err("publish confirms timed out".into()),
        }
    }
    let confirmed = Instant::now();
    let _ = channel.close(200, "done".into()).await;
    let _ = conn.close(200, "done".into()).await;
    Ok(Published { first, confirmed })
}
