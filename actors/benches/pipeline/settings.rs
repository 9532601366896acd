//! The pipeline bench: settings.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Drover,
    Plain,
    Tasks,
    Batched,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Drover => "drover",
            Kind::Plain => "plain",
            Kind::Tasks => "tasks",
            Kind::Batched => "batched",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Kind::Drover => "drover: root supervisor + pipeline_children (actors)",
            Kind::Plain => "plain: lapin + task per delivery + INSERT/POST/UPDATE",
            Kind::Tasks => {
                "tasks: task per delivery + drover's Store (as configured) and Provider, no actors"
            }
            Kind::Batched => {
                "batched: drover's Store batch calls (group commit) + Provider, no actors"
            }
        }
    }

    /// The table whose rows become `sent`.
    pub(crate) fn table(self) -> &'static str {
        match self {
            Kind::Plain => "plain_messages",
            Kind::Drover | Kind::Tasks | Kind::Batched => "messages",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) messages: usize,
    pub(crate) amqp_url: String,
    pub(crate) database_url: String,
    pub(crate) database_port: u16,
    pub(crate) prefetch: u16,
    pub(crate) max_connections: u32,
    /// `store.group_commit_max_batch` (0 = one transaction per call).
    pub(crate) group_commit: usize,
    /// `store.group_commit_in_flight`.
    pub(crate) group_in_flight: usize,
    pub(crate) phases: Vec<Kind>,
    pub(crate) rounds: usize,
    /// Publish at this many messages a second instead of as fast as possible.
    pub(crate) rate: Option<f64>,
    /// After each round's phases, drover and plain again at this rate with this many
    /// messages, for the paced latency target (`None` when the whole run is paced).
    pub(crate) paced: Option<(f64, usize)>,
    /// Run the embedded phases each round.
    pub(crate) embedded: bool,
    pub(crate) batch: usize,
    pub(crate) log_json: bool,
    pub(crate) keep: bool,
    pub(crate) quiet_wait: Duration,
}

pub(crate) fn env_or<T: std::str::FromStr>(key: &str, default: T) -> BenchResult<T> {
    match std::env::var(key) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{key}={v:?} is not a valid value")),
        _ => Ok(default),
    }
}

impl Settings {
    pub(crate) fn from_env() -> BenchResult<Settings> {
        let messages: usize = env_or("DROVER_BENCH_MESSAGES", DEFAULT_MESSAGES)?;
        if messages == 0 || messages > u32::MAX as usize {
            return Err("DROVER_BENCH_MESSAGES must be between 1 and 2^32 - 1".into());
        }
        let phases = env_or("DROVER_BENCH_PHASES", "drover,plain,tasks".to_string())?
            .split(',')
            .map(|p| match p.trim() {
                "drover" => Ok(Kind::Drover),
                "plain" => Ok(Kind::Plain),
                "tasks" => Ok(Kind::Tasks),
                "batched" => Ok(Kind::Batched),
                other => Err(format!(
                    "DROVER_BENCH_PHASES: unknown phase {other:?} (drover, plain, tasks, batched)"
                )),
            })
            .collect::<BenchResult<Vec<Kind>>>()?;
        let rounds: usize = env_or("DROVER_BENCH_ROUNDS", 3)?;
        if rounds == 0 || rounds > 20 {
            return Err("DROVER_BENCH_ROUNDS must be between 1 and 20".into());
        }
        let rate = match env_or("DROVER_BENCH_RATE", 0.0f64)? {
            r if r > 0.0 => Some(r),
            _ => None,
        };
        let prefetch: u16 = env_or("DROVER_BENCH_PREFETCH", BrokerConfig::default().prefetch)?;
        let log = env_or("DROVER_BENCH_LOG", "off".to_string())?;
        if !matches!(log.as_str(), "off" | "json") {
            return Err(format!("DROVER_BENCH_LOG={log:?}: use off or json"));
        }
        let database_url: String =
            env_or("DROVER_TEST_DATABASE_URL", DEFAULT_DATABASE_URL.to_string())?;
        let database_port = database_url
            .parse::<PgConnectOptions>()
            .map_err(|e| format!("DROVER_TEST_DATABASE_URL: {e}"))?
            .get_port();
        Ok(Settings {
            messages,
            amqp_url: env_or("DROVER_TEST_AMQP_URL", DEFAULT_AMQP_URL.to_string())?,
            database_url,
            database_port,
            prefetch,
            max_connections: env_or(
                "DROVER_BENCH_MAX_CONNECTIONS",
                StoreConfig::default().max_connections,
            )?,
            group_commit: env_or(
                "DROVER_BENCH_GROUP_COMMIT",
                StoreConfig::default().group_commit_max_batch,
            )?,
            group_in_flight: env_or(
                "DROVER_BENCH_GROUP_IN_FLIGHT",
                StoreConfig::default().group_commit_in_flight,
            )?,
            phases,
            rounds,
            rate,
            paced: match env_or("DROVER_BENCH_PACED_RATE", 1000.0f64)? {
                r if r > 0.0 && rate.is_none() => {
                    let n: usize = env_or("DROVER_BENCH_PACED_MESSAGES", 5000)?;
                    if n == 0 || n > u32::MAX as usize {
                        return Err(
                            "DROVER_BENCH_PACED_MESSAGES must be between 1 and 2^32 - 1".into()
                        );
                    }
                    Some((r, n))
                }
                _ => None,
            },
            embedded: env_or("DROVER_BENCH_EMBEDDED", 1u8)? != 0,
            batch: env_or("DROVER_BENCH_BATCH", (usize::from(prefetch) / 2).max(1))?.max(1),
            log_json: log == "json",
            keep: env_or("DROVER_BENCH_KEEP", 0u8)? != 0,
            quiet_wait: Duration::from_secs(env_or("DROVER_BENCH_QUIET_WAIT_S", 60u64)?.min(600)),
        })
    }
}

/// Names of one phase's broker topology and schema.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) exchange: String,
    pub(crate) work: String,
    pub(crate) failed: String,
    pub(crate) invalid: String,
    pub(crate) schema: String,
}

impl Names {
    pub(crate) fn new(tag: &str, kind: Kind) -> Names {
        let base = format!("drover-bench.{tag}.{}", kind.name());
        Names {
            exchange: base.clone(),
            work: format!("{base}.outbound"),
            failed: format!("{base}.failed"),
            invalid: format!("{base}.invalid"),
            schema: format!("bench_{tag}_{}", kind.name()),
        }
    }

    pub(crate) fn broker_config(&self, s: &Settings) -> BrokerConfig {
        BrokerConfig {
            url: s.amqp_url.clone(),
            exchange: self.exchange.clone(),
            work_queue: self.work.clone(),
            failed_queue: self.failed.clone(),
            invalid_queue: self.invalid.clone(),
            prefetch: s.prefetch,
            ..BrokerConfig::default()
        }
    }

    pub(crate) fn store_config(&self, s: &Settings) -> StoreConfig {
        StoreConfig {
            url: s.database_url.clone(),
            max_connections: s.max_connections,
            min_connections: StoreConfig::default()
                .min_connections
                .min(s.max_connections),
            schema: Some(self.schema.clone()),
            group_commit_max_batch: s.group_commit,
            group_commit_in_flight: s.group_in_flight,
            ..StoreConfig::default()
        }
    }
}

pub(crate) fn provider_config(addr: SocketAddr) -> ProviderConfig {
    ProviderConfig {
        kind: ProviderKind::Twilio,
        twilio: TwilioConfig {
            base_url: format!("http://{addr}"),
            account_sid: ACCOUNT_SID.into(),
            auth_token: AUTH_TOKEN.into(),
            from: Some(FROM.into()),
            messaging_service_sid: None,
            status_callback_url: None,
        },
        ..ProviderConfig::default()
    }
}
