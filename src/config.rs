//! Layered configuration: the embedded `config/default.toml` < an optional file < environment
//! variables `DROVER_<SECTION>__<KEY>`. Each section's type lives beside what it configures;
//! this module only composes them.

use std::path::Path;

use drover_actors::broker::BrokerConfig;
use drover_actors::demo::DemoConfig;
use drover_actors::message::MessageConfig;
use drover_actors::pipeline::alerts::AlertConfig;
use drover_actors::pipeline::canary::CanaryConfig;
use drover_actors::pipeline::delivery_rate::DeliveryRateConfig;
use drover_actors::pipeline::route::FailoverConfig;
use drover_actors::pipeline::trends::TrendsConfig;
use drover_actors::pipeline::{DeliveryConfig, PipelineConfig, SchedulerConfig};
use drover_actors::provider::ProviderConfig;
use drover_actors::redact::redact_url;
use drover_actors::store::StoreConfig;
use drover_actors::supervisor::config::SupervisionConfig;
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::access::ApiConfig;
use crate::http::{AdminConfig, HttpConfig};
use crate::telemetry::LogConfig;

/// The embedded defaults: every key, documented.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Environment variable naming an optional config file (same as `--config`).
pub const CONFIG_FILE_ENV: &str = "DROVER_CONFIG_FILE";

/// Errors of the configuration layer.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Invalid(String),
    #[error("config file {0} does not exist")]
    MissingFile(String),
}

/// drover's whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub http: HttpConfig,
    pub api: ApiConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub startup: StartupConfig,
    pub pipeline: PipelineSwitch,
    pub supervision: SupervisionConfig,
    pub broker: BrokerConfig,
    pub store: StoreConfig,
    pub provider: ProviderConfig,
    pub message: MessageConfig,
    pub delivery: DeliveryConfig,
    pub scheduler: SchedulerConfig,
    pub alerts: AlertConfig,
    pub delivery_rate: DeliveryRateConfig,
    pub canary: CanaryConfig,
    pub trends: TrendsConfig,
    pub failover: FailoverConfig,
    pub demo: DemoConfig,
}

/// `[pipeline]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSwitch {
    /// Run the delivery pipeline (store, provider, broker subtree, scheduler) under the root.
    pub enabled: bool,
}

/// `[startup]`: the system check before the tree starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartupConfig {
    /// Check the database, the broker and the provider before starting; exit with code 3
    /// if one is unreachable.
    pub check: bool,
    /// The whole check must finish within this time.
    pub deadline_ms: u64,
}

impl Default for Config {
    /// The embedded defaults alone (no file, no environment).
    fn default() -> Self {
        Figment::from(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("config/default.toml is valid (checked by tests)")
    }
}

impl Config {
    /// What the pipeline's actors are configured with.
    pub fn pipeline(&self) -> PipelineConfig {
        PipelineConfig {
            supervision: self.supervision.clone(),
            broker: self.broker.clone(),
            store: self.store.clone(),
            provider: self.provider.clone(),
            message: self.message.clone(),
            delivery: self.delivery.clone(),
            scheduler: self.scheduler.clone(),
            alerts: self.alerts.clone(),
            delivery_rate: self.delivery_rate.clone(),
            canary: self.canary.clone(),
            trends: self.trends.clone(),
            failover: self.failover.clone(),
            queue_sample_ms: self.http.queue_sample_ms,
        }
    }

    /// Defaults < `file` (if given) < `DROVER_<SECTION>__<KEY>` environment variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        if let Some(f) = file
            && !f.exists()
        {
            return Err(ConfigError::MissingFile(f.display().to_string()));
        }
        let config: Config = figment(file)
            .extract_lossy()
            .map_err(|e| ConfigError::Invalid(describe(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Refuse combinations that load but cannot work (exit code 2, naming the keys): message
    /// limits AMQP cannot carry, and a sending lease that could lapse while a provider call
    /// is still in flight (a second delivery would then be admitted and sent twice).
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::access::protected_mode(self.http.addr, &self.api, &self.admin)
            .map_err(ConfigError::Invalid)?;
        self.message.validate().map_err(ConfigError::Invalid)?;
        self.canary.validate().map_err(ConfigError::Invalid)?;
        if self.pipeline.enabled {
            // Mistakes in the dependencies' settings are configuration errors (exit 2, the
            // key named), not dependencies unavailable at start (exit 3).
            use drover_actors::broker::BrokerError;
            use drover_actors::provider::ProviderError;
            self.broker.validate().map_err(|e| match e {
                BrokerError::InvalidConfig(why) => ConfigError::Invalid(why),
                e => ConfigError::Invalid(e.to_string()),
            })?;
            self.provider.validate_chain().map_err(|e| match e {
                ProviderError::InvalidConfig(why) => ConfigError::Invalid(why),
                e => ConfigError::Invalid(e.to_string()),
            })?;
        }
        drover_actors::pipeline::delivery::lease_covers_call(&self.delivery, &self.provider)
            .map_err(ConfigError::Invalid)
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for secret in [
            &mut shown.admin.token,
            &mut shown.api.token,
            &mut shown.provider.twilio.auth_token,
            &mut shown.provider.vonage.api_secret,
        ] {
            if !secret.is_empty() {
                *secret = "<redacted>".into();
            }
        }
        if let Some(t) = shown.provider.webhook.bearer_token.as_mut() {
            *t = "<redacted>".into();
        }
        for f in &mut shown.provider.fallbacks {
            for secret in [&mut f.twilio.auth_token, &mut f.vonage.api_secret] {
                if !secret.is_empty() {
                    *secret = "<redacted>".into();
                }
            }
            if let Some(t) = f.webhook.bearer_token.as_mut() {
                *t = "<redacted>".into();
            }
        }
        // Parsed, not split: a password holding `@`, query secrets, the webhook's path token.
        shown.store.url = redact_url(&shown.store.url, false);
        // A cluster's nodes one by one (a list does not parse as one URL).
        shown.broker.url = shown
            .broker
            .urls()
            .into_iter()
            .map(|u| redact_url(u, false))
            .collect::<Vec<_>>()
            .join(",");
        shown.provider.twilio.base_url = redact_url(&shown.provider.twilio.base_url, false);
        shown.provider.webhook.url = redact_url(&shown.provider.webhook.url, false);
        if let Some(u) = shown.alerts.webhook_url.as_mut() {
            *u = redact_url(u, true);
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// Figment's errors as sentences an operator reads: the key as written in the file
/// (`http.adress`, not `default.http.adress` or `HTTP.ADRESS`), where it came from, what is
/// wrong and, for an unknown key, the keys that exist there.
fn describe(errors: figment::Error) -> String {
    use figment::error::Kind;
    let one = |e: &figment::Error| {
        let key = e.path.join(".").to_ascii_lowercase();
        let key = if key.is_empty() {
            "the configuration".to_owned()
        } else {
            key
        };
        let from = match &e.metadata {
            Some(m) if m.name.contains("environment") => format!(
                " (from the environment variable DROVER_{})",
                key.replace('.', "__").to_ascii_uppercase()
            ),
            Some(m) => match &m.source {
                Some(source) => format!(" (in {source})"),
                None => format!(" (in {})", m.name),
            },
            None => String::new(),
        };
        match &e.kind {
            Kind::UnknownField(_, expected) => format!(
                "unknown key {key}{from}; the keys there are {}",
                expected.join(", ")
            ),
            Kind::UnknownVariant(actual, expected) => format!(
                "{key}{from}: {actual:?} is not one of {}",
                expected.join(", ")
            ),
            Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
                format!("{key}{from}: expected {expected}, found {actual}")
            }
            Kind::MissingField(field) => format!("{key}{from}: {field} is missing"),
            Kind::Message(m) => format!("{key}{from}: {m}"),
            other => format!("{key}{from}: {other}"),
        }
    };
    errors
        .into_iter()
        .map(|e| one(&e))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A string key whose environment value may look like a number or a boolean to the
/// environment provider (`DROVER_ADMIN__TOKEN=12345`): taken as the text it was.
pub fn verbatim_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Verbatim {
        Text(String),
        Int(i128),
        Float(f64),
        Bool(bool),
    }
    Ok(match Verbatim::deserialize(d)? {
        Verbatim::Text(s) => s,
        Verbatim::Int(i) => i.to_string(),
        Verbatim::Float(f) => f.to_string(),
        Verbatim::Bool(b) => b.to_string(),
    })
}

/// `DROVER_SECTION__KEY` variables only: a double underscore separates section and key, so
/// unrelated `DROVER_*` variables (`DROVER_CONFIG_FILE`, test settings) are not config keys.
/// Defaults < `file` < the environment, not yet extracted.
fn figment(file: Option<&Path>) -> Figment {
    let mut fig = Figment::from(Toml::string(DEFAULT_TOML));
    if let Some(f) = file {
        fig = fig.merge(Toml::file(f));
    }
    fig.merge(EnvText::new())
}

/// `DROVER_<SECTION>__<KEY>` variables as figment's `Env` reads them, except that a value it
/// would read as a number or a boolean stays the text it was. Figment's `Env` reads `+15550000000`, `0123`, `1e5` or
/// `true` as numbers and booleans, which a string key then refuses ("invalid type"); kept as
/// text, a string key takes it verbatim and a number or boolean key reads it through
/// [`Figment::extract_lossy`].
#[derive(Debug)]
struct EnvText(Env);

impl EnvText {
    fn new() -> EnvText {
        EnvText(
            Env::prefixed("DROVER_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        )
    }
}

impl Provider for EnvText {
    fn metadata(&self) -> Metadata {
        self.0.metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (key, raw) in self.0.iter() {
            let parsed: Value = raw.parse().expect("parsing a figment Value is infallible");
            let value = match parsed {
                Value::Num(..) | Value::Bool(..) => Value::from(raw),
                other => other,
            };
            let nested = figment::util::nest(key.as_str(), value)
                .into_dict()
                .expect("a non-empty key nests into a dict");
            merge_into(&mut dict, nested);
        }
        Ok(Profile::Default.collect(dict))
    }
}

/// `other`'s keys into `dict`, tables merged key by key (`DROVER_A__B` and `DROVER_A__C`).
fn merge_into(dict: &mut Dict, other: Dict) {
    for (key, value) in other {
        match (dict.get_mut(&key), value) {
            (Some(Value::Dict(_, mine)), Value::Dict(_, theirs)) => merge_into(mine, theirs),
            (_, value) => {
                dict.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_defaults_parse() {
        let c = Config::default();
        assert_eq!(c.http.addr.to_string(), "127.0.0.1:8080");
        assert!(!c.admin.allow_destructive_actions);
        assert_eq!(c.supervision.backoff.multiplier, 3.0);
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn env_overrides_file_and_defaults_and_unknown_keys_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "drover.toml",
                "[http]\naddr = \"127.0.0.1:7000\"\n[admin]\ntoken = \"file\"\n",
            )?;
            jail.set_env("DROVER_HTTP__ADDR", "127.0.0.1:9000");
            jail.set_env("DROVER_ADMIN__ALLOW_DESTRUCTIVE_ACTIONS", "true");
            jail.set_env("DROVER_SUPERVISION__BACKOFF__MIN_MS", "7");
            jail.set_env("DROVER_TEST_DATABASE_URL", "ignored: no double underscore");
            let c = Config::load(Some(Path::new("drover.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.http.addr.to_string(), "127.0.0.1:9000");
            assert_eq!(c.admin.token, "file");
            assert!(c.admin.allow_destructive_actions);
            assert_eq!(c.supervision.backoff.min_ms, 7);
            assert!(!c.redacted_toml().contains("\"file\""));
            assert!(c.redacted_toml().contains("<redacted>"));

            jail.set_env("DROVER_ADMIN__TOKEN", "12345");
            let c = Config::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                c.admin.token, "12345",
                "a digit-only token is still a token"
            );

            jail.set_env("DROVER_HTTP__BOGUS", "1");
            let err = Config::load(None).unwrap_err().to_string();
            assert!(err.contains("bogus"), "{err}");
            Ok(())
        });
    }
    /// The keys of `config/default.toml` whose value is a string, commented-out ones too
    /// (`# from = "+15550000000"`), as dotted paths.
    fn string_keys(toml_text: &str) -> Vec<String> {
        let mut section = String::new();
        let mut keys = Vec::new();
        for line in toml_text.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            let line = line.trim_start_matches('#').trim_start();
            let Some((key, value)) = line.split_once(" = ") else {
                continue;
            };
            let is_key = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if is_key && value.starts_with('"') && !section.is_empty() {
                keys.push(format!("{section}.{key}"));
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    fn lookup<'a>(v: &'a toml::Value, dotted: &str) -> Option<&'a toml::Value> {
        dotted.split('.').try_fold(v, |v, k| v.get(k))
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn every_string_key_takes_numeric_looking_text_from_the_environment() {
        let keys = string_keys(DEFAULT_TOML);
        for must in [
            "provider.twilio.from",
            "admin.token",
            "broker.url",
            "store.url",
        ] {
            assert!(keys.iter().any(|k| k == must), "{must} in {keys:?}");
        }
        let mut taken = 0;
        for value in ["+15550000000", "0123", "1e5", "true"] {
            for key in &keys {
                let var = format!("DROVER_{}", key.replace('.', "__").to_uppercase());
                figment::Jail::expect_with(|jail| {
                    jail.set_env(&var, value);
                    match figment(None).extract_lossy::<Config>() {
                        Ok(c) => {
                            let shown = toml::Value::try_from(&c).expect("serializable");
                            assert_eq!(
                                lookup(&shown, key),
                                Some(&toml::Value::String(value.into())),
                                "{var}={value} is kept verbatim"
                            );
                            taken += 1;
                        }
                        // A key of another type (an address, a URL, a choice) may refuse the
                        // text, but never as "not a string".
                        Err(e) => assert!(
                            !e.to_string().contains("invalid type")
                                && !describe(e.clone()).contains("expected a string"),
                            "{var}={value}: {e}"
                        ),
                    }
                    Ok(())
                });
            }
        }
        assert!(
            taken >= 4 * 10,
            "only {taken} key/value pairs were taken verbatim"
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn configuration_errors_read_as_sentences_naming_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("DROVER_HTTP__ADRESS", "x");
            let e = Config::load(None).unwrap_err().to_string();
            assert_eq!(
                e,
                "invalid configuration: unknown key http.adress (from the environment variable \
                 DROVER_HTTP__ADRESS); the keys there are addr, queue_sample_ms"
            );
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.create_file("bad.toml", "[broker]\nqueue_type = \"stream\"\n")?;
            let e = Config::load(Some(Path::new("bad.toml")))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("broker.queue_type (in ") && e.contains("is not one of classic, quorum"),
                "{e}"
            );
            assert!(!e.contains("``") && !e.contains("default."), "{e}");
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn numbers_and_booleans_still_read_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("DROVER_HTTP__QUEUE_SAMPLE_MS", "250");
            jail.set_env("DROVER_SUPERVISION__BACKOFF__MULTIPLIER", "2.5");
            jail.set_env("DROVER_ADMIN__ALLOW_DESTRUCTIVE_ACTIONS", "true");
            jail.set_env("DROVER_PROVIDER__TWILIO__FROM", "+15550000000");
            let c = Config::load(None).expect("loads");
            assert_eq!(c.http.queue_sample_ms, 250);
            assert_eq!(c.supervision.backoff.multiplier, 2.5);
            assert!(c.admin.allow_destructive_actions);
            assert_eq!(c.provider.twilio.from.as_deref(), Some("+15550000000"));
            Ok(())
        });
    }
}
