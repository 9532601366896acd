//! The pipeline bench: one phase.

use super::*;

pub(crate) async fn count_sent(admin: &PgPool, names: &Names, kind: Kind) -> BenchResult<i64> {
    let sql = format!(
        "SELECT count(*) FROM {}.{} WHERE status = 'sent'",
        names.schema,
        kind.table()
    );
    sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
        .fetch_one(admin)
        .await
        .map_err(|e| err("count sent rows")(&e))
}

pub(crate) async fn status_counts(admin: &PgPool, names: &Names, kind: Kind) -> String {
    let sql = format!(
        "SELECT status, count(*) FROM {}.{} GROUP BY status ORDER BY status",
        names.schema,
        kind.table()
    );
    match sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(sql))
        .fetch_all(admin)
        .await
    {
        Ok(rows) if rows.is_empty() => "no rows".into(),
        Ok(rows) => rows
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        Err(e) => format!("(could not count: {e})"),
    }
}

/// Wait until every message was received by the provider and recorded `sent`; returns when
/// the database first counted N `sent` rows.
pub(crate) async fn wait_done(
    admin: &PgPool,
    names: &Names,
    kind: Kind,
    marks: &Marks,
    sut: &Sut,
    deadline: Instant,
) -> BenchResult<Instant> {
    let n = marks.hits.len();
    let mut next_report = Instant::now() + Duration::from_secs(10);
    while marks.received_unique.load(Ordering::Acquire) < n {
        let now = Instant::now();
        if now > deadline {
            return Err(format!(
                "phase {} aborted after {} s: the provider saw {} of {n} messages; database: {}",
                kind.name(),
                PHASE_LIMIT.as_secs(),
                marks.received_unique.load(Ordering::Acquire),
                status_counts(admin, names, kind).await
            ));
        }
        if marks.publish_failed.load(Ordering::Acquire) {
            return Err(format!(
                "phase {} aborted: the publisher failed",
                kind.name()
            ));
        }
        if let Some(why) = sut.gave_up() {
            return Err(format!("phase {} aborted: {why}", kind.name()));
        }
        if now > next_report {
            println!(
                "[{}]   ... provider has seen {} of {n}",
                kind.name(),
                marks.received_unique.load(Ordering::Acquire)
            );
            next_report = now + Duration::from_secs(10);
        }
        tokio::time::sleep(PROVIDER_POLL).await;
    }
    loop {
        let sent = count_sent(admin, names, kind).await?;
        if sent as usize >= n {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "phase {} aborted after {} s: {sent} of {n} rows sent; database: {}",
                kind.name(),
                PHASE_LIMIT.as_secs(),
                status_counts(admin, names, kind).await
            ));
        }
        tokio::time::sleep(DB_POLL).await;
    }
}

pub(crate) async fn wait_consumer(setup: &Broker, names: &Names, sut: &Sut) -> BenchResult<()> {
    let deadline = Instant::now() + STEP_LIMIT;
    loop {
        match setup.queue_stats(&names.work).await {
            Ok(stats) if stats.consumers >= 1 => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(format!("queue stats: {e}")),
        }
        if let Some(why) = sut.gave_up() {
            return Err(format!("the system under test did not come up: {why}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no consumer on {} after {} s",
                names.work,
                STEP_LIMIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub(crate) async fn prepare_schema(admin: &PgPool, names: &Names, kind: Kind) -> BenchResult<()> {
    if kind != Kind::Plain {
        // drover's store creates its schema and migrates at connect.
        return Ok(());
    }
    let create = format!("CREATE SCHEMA {}", names.schema);
    sqlx::raw_sql(AssertSqlSafe(create))
        .execute(admin)
        .await
        .map_err(|e| err("create schema")(&e))?;
    let table = format!(
        "SET search_path TO {}; {PLAIN_TABLE}; SET search_path TO DEFAULT",
        names.schema
    );
    sqlx::raw_sql(AssertSqlSafe(table))
        .execute(admin)
        .await
        .map_err(|e| err("create table")(&e))?;
    Ok(())
}

pub(crate) async fn drop_schema(admin: &PgPool, names: &Names) {
    let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", names.schema);
    if let Err(e) = sqlx::raw_sql(AssertSqlSafe(sql)).execute(admin).await {
        println!("warning: could not drop schema {}: {e}", names.schema);
    }
}

/// Latencies from the `sent` rows and the provider's marks.
pub(crate) async fn collect_latencies(
    admin: &PgPool,
    names: &Names,
    kind: Kind,
    marks: &Marks,
) -> BenchResult<(Vec<f64>, Vec<f64>, i64)> {
    let sql = format!(
        "SELECT id, updated_at FROM {}.{} WHERE status = 'sent'",
        names.schema,
        kind.table()
    );
    let rows = sqlx::query_as::<_, (String, i64)>(AssertSqlSafe(sql))
        .fetch_all(admin)
        .await
        .map_err(|e| err("read sent rows")(&e))?;
    let mut sent = Vec::with_capacity(rows.len());
    let mut max_updated = i64::MIN;
    for (id, updated_at) in rows {
        if let Some(i) = marks.index_of_text(&id) {
            let published = marks.publish_ms[i].load(Ordering::Relaxed);
            sent.push((updated_at - published) as f64);
            max_updated = max_updated.max(updated_at);
        }
    }
    let provider = (0..marks.hits.len())
        .filter_map(|i| {
            let r = marks.received_ns[i].load(Ordering::Relaxed);
            let p = marks.publish_ns[i].load(Ordering::Relaxed);
            (r > 0 && p > 0).then(|| r.saturating_sub(p) as f64 / 1e6)
        })
        .collect();
    Ok((sent, provider, max_updated))
}

/// When the slowest 1 % (publish -> provider) were published: a few 100 ms windows mean a
/// stall (a pool filling up, a checkpoint), many mean a tail spread over the run.
fn slowest_note(marks: &Marks) -> Option<String> {
    let mut lat: Vec<(u64, u64)> = (0..marks.hits.len())
        .filter_map(|i| {
            let r = marks.received_ns[i].load(Ordering::Relaxed);
            let p = marks.publish_ns[i].load(Ordering::Relaxed);
            (r > 0 && p > 0).then(|| (r.saturating_sub(p), p))
        })
        .collect();
    if lat.len() < 100 {
        return None;
    }
    let first = lat.iter().map(|(_, p)| *p).min()?;
    lat.sort_unstable_by_key(|l| std::cmp::Reverse(l.0));
    let slow = &lat[..lat.len() / 100];
    let at = |p: u64| (p - first) as f64 / 1e9;
    let windows: std::collections::BTreeSet<u64> = slow
        .iter()
        .map(|(_, p)| (p - first) / 100_000_000)
        .collect();
    let top: Vec<String> = windows
        .iter()
        .take(8)
        .map(|w| format!("{:.1}", *w as f64 / 10.0))
        .collect();
    Some(format!(
        "slowest 1% ({} messages, >= {:.1} ms): published {:.2}-{:.2} s into the run, in {} of its 100-ms windows (from {} s)",
        slow.len(),
        slow.last()?.0 as f64 / 1e6,
        at(slow.iter().map(|(_, p)| *p).min()?),
        at(slow.iter().map(|(_, p)| *p).max()?),
        windows.len(),
        top.join(", ")
    ))
}

pub(crate) async fn run_phase(
    kind: Kind,
    s: &Settings,
    tag: &str,
    sut_rt: &Handle,
    admin: &PgPool,
) -> BenchResult<PhaseReport> {
    let names = Names::new(tag, kind);
    let n = s.messages;
    println!();
    println!("== phase {} ({}) ==", kind.name(), kind.describe());
    println!(
        "[{}] queue {}, schema {}",
        kind.name(),
        names.work,
        names.schema
    );
    let marks = Arc::new(Marks::new(n));
    let clock = Clock::new();
    let provider = start_provider(marks.clone()).await?;
    let setup = Broker::connect_named(
        &names.broker_config(s),
        &MemoryBroker::default(),
        "drover-bench-setup",
    )
    .await
    .map_err(|e| err("declaring the topology")(&e))?;
    let result = async {
        prepare_schema(admin, &names, kind).await?;
        // The same start for every phase: no dirty pages of the previous one pending.
        let _ = sqlx::raw_sql("CHECKPOINT").execute(admin).await;
        let (quiet, busy, waited) = wait_quiet(s.quiet_wait).await;
        if quiet {
            println!(
                "[{}] machine quiet ({:.0}% busy) after {:.1} s",
                kind.name(),
                busy * 100.0,
                waited.as_secs_f64()
            );
        } else {
            println!(
                "[{}] WARNING: machine still {:.0}% busy after waiting {:.0} s for it to calm down",
                kind.name(),
                busy * 100.0,
                waited.as_secs_f64()
            );
        }
        let rss_start_kb = status_kb("VmRSS").unwrap_or(0);
        let peak_reset = reset_peak_rss();
        let pg_before = pg_counters(admin).await;
        let cpu_before = cpu_snapshot();
        let sut = start_sut(kind, s, &names, provider.addr, clock, sut_rt).await?;
        let measured = async {
            wait_consumer(&setup, &names, &sut).await?;
            let deadline = Instant::now() + PHASE_LIMIT;
            let publisher = tokio::spawn({
                let marks = marks.clone();
                let publish = publish_all(
                    s.amqp_url.clone(),
                    names.clone(),
                    marks.clone(),
                    clock,
                    s.rate,
                    deadline,
                );
                async move {
                    let result = publish.await;
                    if result.is_err() {
                        marks.publish_failed.store(true, Ordering::Release);
                    }
                    result
                }
            });
            let done = wait_done(admin, &names, kind, &marks, &sut, deadline).await;
            let published = publisher
                .await
                .map_err(|e| err("publisher task")(&e))??;
            Ok::<_, String>((published, done?))
        }
        .await;
        let cpu_after = cpu_snapshot();
        let mine = my_backends(admin, s.database_port).await;
        let rss_peak_kb = status_kb("VmHWM").unwrap_or(0);
        let counters = sut.counters().map(|c| {
            (
                c.deliveries.load(Ordering::Relaxed),
                c.redelivered.load(Ordering::Relaxed),
                c.errors.load(Ordering::Relaxed),
                c.batches.load(Ordering::Relaxed),
                c.first_error.lock().clone(),
            )
        });
        let stopped = sut.stop().await;
        // Backends report their counters when they exit or at most once a second.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let pg_after = pg_counters(admin).await;
        let (published, end) = measured?;
        stopped?;
        let (sent_lat, provider_lat, max_updated) =
            collect_latencies(admin, &names, kind, &marks).await?;
        let elapsed = end.saturating_duration_since(published.first);
        let first_publish_ms = (0..n)
            .map(|i| marks.publish_ms[i].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        let mut notes = vec![pg_note(pg_before, pg_after, n)];
        if let Some(note) = slowest_note(&marks) {
            notes.push(note);
        }
        let duplicates = marks
            .hits
            .iter()
            .filter(|h| h.load(Ordering::Relaxed) > 1)
            .count();
        notes.push(format!(
            "checks: provider requests {} for {} ids ({} sent twice or more, {} unknown); rows: {}",
            marks.received_total.load(Ordering::Relaxed),
            marks.received_unique.load(Ordering::Relaxed),
            duplicates,
            marks.unknown.load(Ordering::Relaxed),
            status_counts(admin, &names, kind).await
        ));
        if let Some((deliveries, redelivered, errors, batches, first_error)) = counters {
            notes.push(format!(
                "consumer: {deliveries} deliveries ({redelivered} redelivered), {errors} errors{}{}",
                if batches > 0 {
                    format!(
                        ", {batches} batches (mean {:.1} deliveries, at most {})",
                        deliveries as f64 / batches as f64,
                        s.batch
                    )
                } else {
                    String::new()
                },
                first_error.map_or(String::new(), |e| format!(" (first: {e})"))
            ));
        }
        if kind != Kind::Plain {
            let sql = format!(
                "SELECT count(*), count(*) FILTER (WHERE outcome = 'sent') FROM {}.attempts",
                names.schema
            );
            if let Ok((all, sent)) = sqlx::query_as::<_, (i64, i64)>(AssertSqlSafe(sql))
                .fetch_one(admin)
                .await
            {
                notes.push(format!("attempts rows: {all} ({sent} sent)"));
            }
        }
        match setup.queue_stats(&names.work).await {
            Ok(q) => notes.push(format!(
                "work queue after shutdown: {} ready (unacked ones would be back here), {} consumers",
                q.ready, q.consumers
            )),
            Err(e) => notes.push(format!("work queue stats: {e}")),
        }
        let publish_secs = published
            .confirmed
            .saturating_duration_since(published.first)
            .as_secs_f64();
        let updated_span_ms = (max_updated - first_publish_ms).max(1) as f64;
        Ok::<_, String>(PhaseReport {
            kind,
            paced: false,
            n,
            elapsed,
            throughput: n as f64 / elapsed.as_secs_f64().max(1e-9),
            publish_rate: n as f64 / publish_secs.max(1e-9),
            throughput_by_updated_at: n as f64 / (updated_span_ms / 1e3),
            sent_latency: latency(sent_lat),
            provider_latency: latency(provider_lat),
            rss_start_kb,
            rss_peak_kb,
            rss_end_kb: status_kb("VmRSS").unwrap_or(0),
            peak_reset,
            cpu: cpu_delta(&cpu_before, &cpu_after, &mine),
            notes,
        })
    }
    .await;
    if !s.keep {
        if let Err(e) = setup.delete_topology().await {
            println!(
                "warning: could not delete the topology of {}: {e}",
                names.work
            );
        }
        drop_schema(admin, &names).await;
    }
    let _ = setup.close().await;
    let _ = provider.stop.send(());
    let _ = tokio::time::timeout(STEP_LIMIT, provider.task).await;
    let mut report = result?;
    report.rss_end_kb = status_kb("VmRSS").unwrap_or(0);
    report.print();
    Ok(report)
}
