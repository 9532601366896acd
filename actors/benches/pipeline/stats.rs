//! The pipeline bench: statistics and output.

use super::*;

pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) mean: f64,
    pub(crate) count: usize,
}

pub(crate) fn latency(mut v: Vec<f64>) -> Latency {
    v.sort_by(f64::total_cmp);
    let mean = if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    };
    Latency {
        p50: percentile(&v, 0.50),
        p99: percentile(&v, 0.99),
        max: v.last().copied().unwrap_or(f64::NAN),
        mean,
        count: v.len(),
    }
}

pub(crate) struct PhaseReport {
    pub(crate) kind: Kind,
    /// Run by the paced pass (not the full-speed phases).
    pub(crate) paced: bool,
    pub(crate) n: usize,
    pub(crate) elapsed: Duration,
    pub(crate) throughput: f64,
    pub(crate) publish_rate: f64,
    /// N / (first publish → the greatest `updated_at`), a cross-check of the throughput.
    pub(crate) throughput_by_updated_at: f64,
    pub(crate) sent_latency: Latency,
    pub(crate) provider_latency: Latency,
    pub(crate) rss_start_kb: u64,
    pub(crate) rss_peak_kb: u64,
    pub(crate) rss_end_kb: u64,
    pub(crate) peak_reset: bool,
    pub(crate) cpu: CpuDelta,
    pub(crate) notes: Vec<String>,
}

impl PhaseReport {
    pub(crate) fn print(&self) {
        let k = self.kind.name();
        println!(
            "[{k}] throughput {:.0} msgs/s ({} messages in {:.3} s, first publish -> last sent row seen); publisher alone {:.0} msgs/s",
            self.throughput,
            self.n,
            self.elapsed.as_secs_f64(),
            self.publish_rate
        );
        println!(
            "[{k}]   cross-check: N / (first publish -> max updated_at) = {:.0} msgs/s",
            self.throughput_by_updated_at
        );
        let l = &self.sent_latency;
        println!(
            "[{k}] latency publish->sent (updated_at, 1 ms resolution): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  mean {:.1} ms  (n = {})",
            l.p50, l.p99, l.max, l.mean, l.count
        );
        let l = &self.provider_latency;
        println!(
            "[{k}] latency publish->provider received (harness clock):  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  mean {:.2} ms  (n = {})",
            l.p50, l.p99, l.max, l.mean, l.count
        );
        println!(
            "[{k}] RSS: {:.1} MiB at start, peak {:.1} MiB during the phase ({}; +{:.1} MiB over the start), {:.1} MiB after teardown",
            mib(self.rss_start_kb),
            mib(self.rss_peak_kb),
            if self.peak_reset {
                "VmHWM reset at the phase start"
            } else {
                "VmHWM NOT reset: process-wide peak"
            },
            mib(self.rss_peak_kb.saturating_sub(self.rss_start_kb)),
            mib(self.rss_end_kb)
        );
        let c = &self.cpu;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let per_msg = |s: f64| s * 1e6 / self.n as f64;
        let threads: Vec<String> = c
            .threads
            .iter()
            .filter(|(_, s)| **s >= 0.005)
            .map(|(name, s)| format!("{name} {s:.2} s ({:.0} µs/msg)", per_msg(*s)))
            .collect();
        println!(
            "[{k}] CPU over {secs:.2} s: this process {:.2} s [{}]; postgres {:.2} s ({:.0} µs/msg); rabbitmq {:.2} s ({:.0} µs/msg); other processes {:.2} s; machine busy {:.0}% of {} cores",
            c.process,
            threads.join(", "),
            c.postgres,
            per_msg(c.postgres),
            c.rabbitmq,
            per_msg(c.rabbitmq),
            c.other,
            c.machine_busy * 100.0,
            c.cores
        );
        let sut_threads = c.threads.get("sut").copied().unwrap_or(0.0);
        let own = sut_threads + c.postgres_mine;
        println!(
            "[{k}] CPU of the system under test: its runtime {sut_threads:.2} s + its PostgreSQL backends {:.2} s = {:.0} µs/msg (RabbitMQ and the harness excluded; the backends include the harness's few polls)",
            c.postgres_mine,
            per_msg(own)
        );
        if c.other > 0.1 * secs * c.cores {
            println!(
                "[{k}] WARNING: other processes used {:.0}% of the machine during this phase: its figures are disturbed",
                c.other * 100.0 / (secs * c.cores)
            );
        }
        for n in &self.notes {
            println!("[{k}] {n}");
        }
    }
}
