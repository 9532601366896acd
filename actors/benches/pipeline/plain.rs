//! The pipeline bench: the plain consumer and the tasks consumer.

use super::*;

pub(crate) const PLAIN_TABLE: &str = "\
CREATE TABLE plain_messages (
    id                  TEXT    PRIMARY KEY,
    correlation_id      TEXT    NOT NULL,
    recipient           TEXT    NOT NULL,
    body                TEXT    NOT NULL,
    sender              TEXT,
    status              TEXT    NOT NULL,
    attempts            INTEGER NOT NULL,
    provider_message_id TEXT,
    created_at          BIGINT  NOT NULL,
    updated_at          BIGINT  NOT NULL
)";

pub(crate) const PLAIN_INSERT: &str = "\
INSERT INTO plain_messages (id, correlation_id, recipient, body, sender, status, attempts, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, 'sending', 1, $6, $6)
ON CONFLICT (id) DO NOTHING";

pub(crate) const PLAIN_SENT: &str = "\
UPDATE plain_messages SET status = 'sent', provider_message_id = $2, updated_at = $3
WHERE id = $1 AND status = 'sending'";

#[derive(serde::Deserialize)]
pub(crate) struct Created {
    pub(crate) sid: String,
}

pub(crate) struct PlainCtx {
    pub(crate) pool: PgPool,
    pub(crate) http: reqwest::Client,
    pub(crate) url: String,
    pub(crate) clock: Clock,
    pub(crate) message: MessageConfig,
}

pub(crate) struct TasksCtx {
    pub(crate) store: Store,
    pub(crate) provider: Provider,
    pub(crate) clock: Clock,
    pub(crate) message: MessageConfig,
    /// `batched` only: most deliveries per group commit.
    pub(crate) batch: usize,
}

#[derive(Clone)]
pub(crate) enum Work {
    Plain(Arc<PlainCtx>),
    Tasks(Arc<TasksCtx>),
    Batched(Arc<TasksCtx>),
}

#[derive(Default)]
pub(crate) struct ConsumerCounters {
    pub(crate) deliveries: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) batches: AtomicU64,
    pub(crate) first_error: parking_lot::Mutex<Option<String>>,
}

pub(crate) async fn plain_handle(ctx: &PlainCtx, body: &[u8]) -> Result<(), String> {
    let msg = parse(body, &Envelope::default(), &ctx.message).map_err(|e| e.to_string())?;
    let id = msg.id.to_string();
    sqlx::query(PLAIN_INSERT)
        .bind(id.as_str())
        .bind(msg.correlation_id.as_str())
        .bind(msg.to.as_str())
        .bind(msg.body.as_str())
        .bind(msg.from.as_deref())
        .bind(ctx.clock.now_ms())
        .execute(&ctx.pool)
        .await
        .map_err(|e| err("insert")(&e))?;
    let from = msg.from.as_deref().unwrap_or(FROM);
    let resp = ctx
        .http
        .post(ctx.url.as_str())
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .header(header::ACCEPT, "application/json")
        .header(CORRELATION_HEADER, msg.correlation_id.as_str())
        .header(IDEMPOTENCY_HEADER, id.as_str())
        .form(&[
            ("To", msg.to.as_str()),
            ("From", from),
            ("Body", msg.body.as_str()),
            ("Attempt", "1"),
        ])
        .send()
        .await
        .map_err(|e| err("provider")(&e))?;
    if !resp.status().is_success() {
        return Err(format!("provider answered {}", resp.status()));
    }
    let created: Created = resp.json().await.map_err(|e| err("provider answer")(&e))?;
    sqlx::query(PLAIN_SENT)
        .bind(id.as_str())
        .bind(created.sid.as_str())
        .bind(ctx.clock.now_ms())
        .execute(&ctx.pool)
        .await
        .map_err(|e| err("update")(&e))?;
    Ok(())
}

pub(crate) async fn tasks_handle(ctx: &TasksCtx, body: &[u8]) -> Result<(), String> {
    let msg = parse(body, &Envelope::default(), &ctx.message).map_err(|e| e.to_string())?;
    let admission = ctx
        .store
        .begin_attempt(&msg, ctx.clock.now_ms())
        .await
        .map_err(|e| err("begin_attempt")(&e))?;
    let attempt = match admission {
        Admission::Proceed { attempt, .. } => attempt,
        Admission::AlreadySent { .. } => return Ok(()),
        other => return Err(format!("unexpected admission {other:?}")),
    };
    let provider_message_id = match ctx.provider.send(&msg, attempt).await {
        SendOutcome::Sent {
            provider_message_id,
        } => provider_message_id,
        other => return Err(format!("provider: {other}")),
    };
    ctx.store
        .record_outcome(
            msg.id,
            attempt,
            &AttemptOutcome::Sent {
                provider_message_id,
                latency_ms: 0,
                provider: None,
            },
            ctx.clock.now_ms(),
        )
        .await
        .map_err(|e| err("record_outcome")(&e))
}

/// The `batched` phase: many deliveries, one transaction for their admissions, concurrent
/// sends, one transaction for their outcomes.
pub(crate) async fn batch_handle(
    ctx: &TasksCtx,
    batch: &[lapin::message::Delivery],
) -> Result<(), String> {
    let msgs = batch
        .iter()
        .map(|d| parse(&d.data, &Envelope::default(), &ctx.message).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let admissions = ctx
        .store
        .begin_attempts(&msgs, ctx.clock.now_ms())
        .await
        .map_err(|e| err("begin_attempts")(&e))?;
    let mut to_send = Vec::with_capacity(msgs.len());
    for (msg, admission) in msgs.iter().zip(admissions) {
        match admission {
            Admission::Proceed { attempt, .. } => to_send.push((msg, attempt)),
            Admission::AlreadySent { .. } => {}
            other => return Err(format!("unexpected admission {other:?}")),
        }
    }
    let sent = futures::future::join_all(to_send.into_iter().map(|(msg, attempt)| async move {
        (msg.id, attempt, ctx.provider.send(msg, attempt).await)
    }))
    .await;
    let mut outcomes = Vec::with_capacity(sent.len());
    for (id, attempt, outcome) in sent {
        match outcome {
            SendOutcome::Sent {
                provider_message_id,
            } => outcomes.push((
                id,
                attempt,
                AttemptOutcome::Sent {
                    provider_message_id,
                    latency_ms: 0,
                    provider: None,
                },
            )),
            other => return Err(format!("provider: {other}")),
        }
    }
    ctx.store
        .record_outcomes(&outcomes, ctx.clock.now_ms())
        .await
        .map_err(|e| err("record_outcomes")(&e))
}

pub(crate) async fn settle(
    d: &lapin::message::Delivery,
    result: &Result<(), String>,
    counters: &ConsumerCounters,
) {
    let settled = match result {
        Ok(()) => d.acker.ack(BasicAckOptions::default()).await,
        Err(e) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            counters.first_error.lock().get_or_insert(e.clone());
            d.acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await
        }
    };
    if let Err(e) = settled {
        counters.errors.fetch_add(1, Ordering::Relaxed);
        counters
            .first_error
            .lock()
            .get_or_insert(format!("settle: {e}"));
    }
}

/// How long the batcher waits for a batch to fill once it holds a delivery.
pub(crate) const BATCH_LINGER: Duration = Duration::from_millis(1);

/// Group deliveries (up to `ctx.batch`, or what came within [`BATCH_LINGER`]) and run each
/// group as a task; the prefetch bounds what is in flight.
pub(crate) async fn batcher(
    ctx: Arc<TasksCtx>,
    mut rx: mpsc::UnboundedReceiver<lapin::message::Delivery>,
    counters: Arc<ConsumerCounters>,
) {
    let mut running = JoinSet::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let linger = tokio::time::sleep(BATCH_LINGER);
        tokio::pin!(linger);
        while batch.len() < ctx.batch {
            tokio::select! {
                biased;
                d = rx.recv() => match d {
                    Some(d) => batch.push(d),
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        let (ctx, counters) = (ctx.clone(), counters.clone());
        running.spawn(async move {
            let result = batch_handle(&ctx, &batch).await;
            for d in &batch {
                settle(d, &result, &counters).await;
            }
        });
        while running.try_join_next().is_some() {}
    }
    while running.join_next().await.is_some() {}
}

pub(crate) async fn handle_delivery(
    work: Work,
    d: lapin::message::Delivery,
    counters: Arc<ConsumerCounters>,
) {
    let result = match &work {
        Work::Plain(ctx) => plain_handle(ctx, &d.data).await,
        Work::Tasks(ctx) => tasks_handle(ctx, &d.data).await,
        Work::Batched(_) => Err("batched deliveries go through the batcher".to_string()),
    };
    settle(&d, &result, &counters).await;
}

/// Consume `queue` with `prefetch`, one task per delivery, until `stop`.
pub(crate) async fn consume(
    url: String,
    queue: String,
    prefetch: u16,
    work: Work,
    counters: Arc<ConsumerCounters>,
    mut stop: oneshot::Receiver<()>,
) -> BenchResult<()> {
    let conn = Connection::connect(
        &url,
        ConnectionProperties::default().with_connection_name("drover-bench-consumer".into()),
    )
    .await
    .map_err(|e| err("consumer connect")(&e))?;
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| err("consumer channel")(&e))?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(|e| err("basic.qos")(&e))?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "drover-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| err("basic.consume")(&e))?;
    let mut tasks = JoinSet::new();
    let (batch_tx, batch_rx) = mpsc::unbounded_channel();
    let batching = match &work {
        Work::Batched(ctx) => Some(tokio::spawn(batcher(
            ctx.clone(),
            batch_rx,
            counters.clone(),
        ))),
        _ => None,
    };
    let outcome = loop {
        tokio::select! {
            _ = &mut stop => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(d)) => {
                    counters.deliveries.fetch_add(1, Ordering::Relaxed);
                    if d.redelivered {
                        counters.redelivered.fetch_add(1, Ordering::Relaxed);
                    }
                    if batching.is_some() {
                        let _ = batch_tx.send(d);
                    } else {
                        tasks.spawn(handle_delivery(work.clone(), d, counters.clone()));
                    }
                }
                Some(Err(e)) => break Err(format!("consumer failed: {e}")),
                None => break Err("consumer ended".to_string()),
            },
        }
        while tasks.try_join_next().is_some() {}
    };
    drop(batch_tx);
    let _ = tokio::time::timeout(STEP_LIMIT, async {
        while tasks.join_next().await.is_some() {}
        if let Some(b) = batching {
            let _ = b.await;
        }
    })
    .await;
    let _ = channel.close(200, "bench over".into()).await;
    let _ = conn.close(200, "bench over".into()).await;
    outcome
}
