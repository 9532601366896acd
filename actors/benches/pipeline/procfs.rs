//! The pipeline bench: /proc: memory and CPU.

use super::*;

pub(crate) fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Reset the process's peak RSS to its current RSS (Linux ≥ 4.0).
pub(crate) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `(comm, utime + stime)` of a `/proc/.../stat` line.
pub(crate) fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // Fields after the comm start at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

#[derive(Debug, Clone, Default)]
pub(crate) struct CpuSnap {
    /// This process's threads: tid → (name, ticks).
    pub(crate) threads: HashMap<u64, (String, u64)>,
    pub(crate) process: u64,
    /// PostgreSQL and RabbitMQ processes: pid → (comm, ticks).
    pub(crate) services: HashMap<u64, (String, u64)>,
    /// Machine: (busy, total) ticks.
    pub(crate) machine: (u64, u64),
}

pub(crate) fn cpu_snapshot() -> CpuSnap {
    let mut snap = CpuSnap::default();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else {
                continue;
            };
            if let Some(stat) = std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            {
                snap.threads.insert(tid, stat);
            }
        }
    }
    snap.process = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| parse_stat(&t))
        .map_or(0, |(_, t)| t);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|t| t.parse::<u64>().ok()) else {
                continue;
            };
            if let Some((comm, ticks)) = std::fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            {
                if comm == "postgres" || comm.starts_with("beam") || comm.starts_with("erl") {
                    snap.services.insert(pid, (comm, ticks));
                }
            }
        }
    }
    if let Some(line) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| t.lines().next().map(str::to_string))
    {
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let total: u64 = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        snap.machine = (total.saturating_sub(idle), total);
    }
    snap
}

#[derive(Debug, Clone, Default)]
pub(crate) struct CpuDelta {
    /// Seconds per thread name of this process.
    pub(crate) threads: BTreeMap<String, f64>,
    pub(crate) process: f64,
    pub(crate) postgres: f64,
    /// Of `postgres`: the backends serving this process's connections.
    pub(crate) postgres_mine: f64,
    pub(crate) rabbitmq: f64,
    /// Busy CPU seconds of the machine not accounted for by the three above.
    pub(crate) other: f64,
    pub(crate) machine_busy: f64,
    pub(crate) cores: f64,
}

pub(crate) fn cpu_delta(before: &CpuSnap, after: &CpuSnap, mine: &HashSet<u64>) -> CpuDelta {
    let mut d = CpuDelta::default();
    for (tid, (name, ticks)) in &after.threads {
        let was = before.threads.get(tid).map_or(0, |(_, t)| *t);
        *d.threads.entry(name.clone()).or_default() +=
            ticks.saturating_sub(was) as f64 / TICKS_PER_SEC;
    }
    d.process = after.process.saturating_sub(before.process) as f64 / TICKS_PER_SEC;
    for (pid, (comm, ticks)) in &after.services {
        let was = before.services.get(pid).map_or(0, |(_, t)| *t);
        let secs = ticks.saturating_sub(was) as f64 / TICKS_PER_SEC;
        if comm == "postgres" {
            d.postgres += secs;
            if mine.contains(pid) {
                d.postgres_mine += secs;
            }
        } else {
            d.rabbitmq += secs;
        }
    }
    let busy = after.machine.0.saturating_sub(before.machine.0) as f64;
    let total = after.machine.1.saturating_sub(before.machine.1) as f64;
    d.machine_busy = if total > 0.0 { busy / total } else { 0.0 };
    d.cores = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    d.other = (busy / TICKS_PER_SEC - d.process - d.postgres - d.rabbitmq).max(0.0);
    d
}

/// Local ports of this process's TCP connections to `remote_port`.
pub(crate) fn my_local_ports(remote_port: u16) -> Vec<i32> {
    let inodes: HashSet<u64> = std::fs::read_dir("/proc/self/fd")
        .map(|dir| {
            dir.flatten()
                .filter_map(|e| {
                    let link = std::fs::read_link(e.path()).ok()?;
                    let link = link.to_str()?;
                    link.strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    let port = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(inode)) = (f.get(1), f.get(2), f.get(9)) else {
                continue;
            };
            if port(remote) == Some(remote_port)
                && inode.parse().is_ok_and(|i: u64| inodes.contains(&i))
            {
                if let Some(p) = port(local) {
                    ports.push(i32::from(p));
                }
            }
        }
    }
    ports
}

/// PostgreSQL backends (pids) serving this process's connections.
pub(crate) async fn my_backends(admin: &PgPool, server_port: u16) -> HashSet<u64> {
    let ports = my_local_ports(server_port);
    sqlx::query_scalar::<_, i32>("SELECT pid FROM pg_stat_activity WHERE client_port = ANY($1)")
        .bind(ports)
        .fetch_all(admin)
        .await
        .map(|pids| pids.into_iter().map(|p| p as u64).collect())
        .unwrap_or_default()
}

/// The machine's busy share over `window`.
pub(crate) async fn machine_busy(window: Duration) -> f64 {
    let a = cpu_snapshot().machine;
    tokio::time::sleep(window).await;
    let b = cpu_snapshot().machine;
    let total = b.1.saturating_sub(a.1) as f64;
    if total > 0.0 {
        b.0.saturating_sub(a.0) as f64 / total
    } else {
        0.0
    }
}

/// Below this busy share the machine counts as quiet.
pub(crate) const QUIET_BUSY: f64 = 0.15;

/// Wait (at most `limit`) until the machine is quiet: other processes (builds, tests, the
/// previous phase's database housekeeping) would otherwise take CPU from the phase.
pub(crate) async fn wait_quiet(limit: Duration) -> (bool, f64, Duration) {
    let start = Instant::now();
    loop {
        let busy = machine_busy(Duration::from_millis(500)).await;
        if busy < QUIET_BUSY || start.elapsed() >= limit {
            return (busy < QUIET_BUSY, busy, start.elapsed());
        }
    }
}

/// PostgreSQL's own counters: the database's (every client of it, not only this bench) and
/// the server's WAL.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PgCounters {
    pub(crate) commits: i64,
    pub(crate) inserted: i64,
    pub(crate) updated: i64,
    pub(crate) wal_records: i64,
    pub(crate) wal_bytes: i64,
    pub(crate) wal_syncs: i64,
}

pub(crate) async fn pg_counters(admin: &PgPool) -> Option<PgCounters> {
    let (commits, inserted, updated) = sqlx::query_as::<_, (i64, i64, i64)>(
        "SELECT xact_commit, tup_inserted, tup_updated FROM pg_stat_database \
         WHERE datname = current_database()",
    )
    .fetch_one(admin)
    .await
    .ok()?;
    let (wal_records, wal_bytes, wal_syncs) = sqlx::query_as::<_, (i64, i64, i64)>(
        "SELECT wal_records, wal_bytes::bigint, wal_sync FROM pg_stat_wal",
    )
    .fetch_one(admin)
    .await
    .ok()?;
    Some(PgCounters {
        commits,
        inserted,
        updated,
        wal_records,
        wal_bytes,
        wal_syncs,
    })
}

pub(crate) fn pg_note(before: Option<PgCounters>, after: Option<PgCounters>, n: usize) -> String {
    let (Some(b), Some(a)) = (before, after) else {
        return "postgres counters: not available".into();
    };
    let per = |x: i64, y: i64| (x - y) as f64 / n as f64;
    format!(
        "postgres per message (whole database and server, so other clients count too): {:.2} commits, {:.2} rows inserted, {:.2} rows updated, {:.1} WAL records, {:.0} WAL bytes, {:.2} WAL fsyncs",
        per(a.commits, b.commits),
        per(a.inserted, b.inserted),
        per(a.updated, b.updated),
        per(a.wal_records, b.wal_records),
        per(a.wal_bytes, b.wal_bytes),
        per(a.wal_syncs, b.wal_syncs)
    )
}
