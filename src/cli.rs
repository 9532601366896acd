//! The command line: `drover [serve]` runs the service; `status`, `kill`, `terminate`, `restart`, `retry` and
//! `redrive` are clients of a running instance's HTTP endpoint; `config` prints the
//! effective configuration, secrets redacted.
//!
//! Every failure is one line on stderr (`drover: ...`) and an exit code from [`crate::exit`]:
//! 2 for a bad command line or configuration, 1 for a failed client call, the codes of
//! [`RunError::exit_code`](crate::RunError::exit_code) for `serve`.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{CONFIG_FILE_ENV, Config};
use crate::exit::{EXIT_CONFIG, EXIT_ERROR};
use crate::tree_text;

/// How long a client command waits for an answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// drover: a self-healing message delivery service.
///
/// Without a command, runs the service (`drover serve`). The other commands talk to a running
/// instance over its HTTP endpoint.
#[derive(Debug, Parser)]
#[command(
    name = "drover",
    version,
    after_help = "Exit codes: 0 ok, 1 error (or a failed client call), 2 bad configuration or \
                  command line, 3 a dependency unavailable at start, 4 the root supervisor gave up."
)]
pub struct Cli {
    /// Config file, layered over the embedded defaults (environment variables
    /// DROVER_<SECTION>__<KEY> override both).
    #[arg(long, short = 'c', global = true, value_name = "FILE", env = CONFIG_FILE_ENV)]
    pub config: Option<PathBuf>,
    /// Base URL of the running drover, for the client commands [default: http:// + http.addr
    /// from the config, 0.0.0.0 replaced by 127.0.0.1].
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// Admin bearer token, for kill, terminate, restart, retry and redrive [default: admin.token from the config,
    /// e.g. DROVER_ADMIN__TOKEN].
    #[arg(long, global = true, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Client commands: print the server's JSON answer instead of the text line (or tree).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// drover's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service until SIGINT or SIGTERM (the default).
    Serve,
    /// Show the live supervision tree of a running drover.
    Status {},
    /// Kill the actor at PATH (e.g. root/broker/connection); its supervisor restarts it.
    Kill {
        /// The actor's path in the tree.
        path: String,
    },
    /// Stop the actor at PATH through its supervisor; it stays stopped until `restart`.
    Terminate {
        /// The actor's path in the tree.
        path: String,
    },
    /// Start the terminated actor at PATH again, through its supervisor.
    Restart {
        /// The actor's path in the tree.
        path: String,
    },
    /// Retry one message now.
    Retry {
        /// The message id.
        id: String,
    },
    /// Re-drive the failed queue: republish failed messages to the work queue.
    Redrive {
        /// Only report what would be re-driven.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the effective configuration, secrets redacted.
    Config,
}

/// A command's failure: the exit code and the one line that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// The binary's `main`: parse the process's arguments and run the command.
pub fn main() -> ExitCode {
    let code = match Cli::try_parse() {
        Ok(cli) => match run(cli) {
            Ok(()) => 0,
            Err(f) => report(&f),
        },
        Err(e) => usage_error(e),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<(), Failure> {
    let command = cli.command.unwrap_or(Command::Serve);
    let client = matches!(
        command,
        Command::Status { .. }
            | Command::Kill { .. }
            | Command::Terminate { .. }
            | Command::Restart { .. }
            | Command::Retry { .. }
            | Command::Redrive { .. }
    );
    if !client && (cli.url.is_some() || cli.token.is_some()) {
        return Err(Failure::new(
            EXIT_CONFIG,
            "--url and --token are for the client commands (status, kill, terminate, restart, retry, redrive)",
        ));
    }
    let config = Config::load(cli.config.as_deref())
        .map_err(|e| Failure::new(EXIT_CONFIG, e.to_string()))?;
    match command {
        Command::Serve => serve(config),
        Command::Config => {
            print!("{}", config.redacted_toml());
            Ok(())
        }
        command => {
            let base = match cli.url {
                Some(u) => normalize_url(&u)?,
                None => default_url(config.http.addr),
            };
            let token = cli.token.unwrap_or_else(|| config.admin.token.clone());
            client_command(command, Client::new(base, token)?, cli.json)
        }
    }
}

/// The service: logging, a runtime, [`crate::run`] until SIGINT/SIGTERM.
fn serve(config: Config) -> Result<(), Failure> {
    crate::telemetry::init(&config.log);
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|e| Failure::new(EXIT_ERROR, format!("cannot start the runtime: {e}")))?;
    runtime
        .block_on(crate::run(config, shutdown_signal()))
        .map_err(|e| Failure::new(e.exit_code(), e.to_string()))
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Print a failure as one line on stderr; return its exit code.
fn report(f: &Failure) -> i32 {
    eprintln!("drover: {}", one_line(&f.message));
    f.code
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Help and version go to stdout (exit 0); a usage error is one line on stderr (exit 2).
fn usage_error(e: clap::Error) -> i32 {
    if !e.use_stderr() {
        let _ = e.print();
        return 0;
    }
    // clap renders "error: ...", maybe continued on indented lines, then blank-line separated
    // tips, usage and a hint: keep the error and the tips, on one line.
    let text = e.render().to_string();
    let mut paragraphs = text.split("\n\n").map(one_line).filter(|p| !p.is_empty());
    let first = paragraphs.next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(&first);
    let mut message = if first.is_empty() {
        "invalid command line".to_string()
    } else {
        first.to_string()
    };
    for tip in paragraphs.filter(|p| p.starts_with("tip: ")) {
        let _ = write!(message, "; {tip}");
    }
    message.push_str(" (see `drover --help`)");
    report(&Failure::new(EXIT_CONFIG, message))
}

/// `http://` + the listen address, a wildcard address replaced by loopback.
pub fn default_url(addr: SocketAddr) -> String {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}")
}

/// `host:port` -> `http://host:port`; no trailing slash.
fn normalize_url(url: &str) -> Result<String, Failure> {
    let given = url.trim();
    if given.is_empty() {
        return Err(Failure::new(EXIT_CONFIG, "--url is empty"));
    }
    // A scheme only where none is given: `127.0.0.1:8080` is http; `http://` stays itself (and
    // is refused below for its missing host) rather than becoming `http://http:`.
    let url = if given.contains("://") {
        given.to_string()
    } else {
        format!("http://{given}")
    };
    match reqwest::Url::parse(&url) {
        Ok(u) if !matches!(u.scheme(), "http" | "https") => Err(Failure::new(
            EXIT_CONFIG,
            format!(
                "--url {given}: unsupported scheme `{}` (http or https)",
                u.scheme()
            ),
        )),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => Err(Failure::new(
            EXIT_CONFIG,
            format!("--url {given}: no host (e.g. --url http://127.0.0.1:8080)"),
        )),
        Ok(_) => Ok(url.trim_end_matches('/').to_string()),
        Err(e) => Err(Failure::new(EXIT_CONFIG, format!("--url {given}: {e}"))),
    }
}

fn client_command(command: Command, client: Client, json: bool) -> Result<(), Failure> {
    // One style for every command: a line of text (the tree for `status`), or with --json
    // the server's answer as it came.
    let say = |body: &serde_json::Value, line: String| {
        if json {
            println!("{}", pretty(body));
        } else {
            println!("{line}");
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(EXIT_ERROR, format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        match command {
            Command::Status {} => {
                let body = client.get("/status?format=json").await?;
                if json {
                    println!("{}", pretty(&body));
                } else {
                    let snap: tree_text::Snapshot = serde_json::from_value(body).map_err(|e| {
                        Failure::new(
                            EXIT_ERROR,
                            format!("unexpected answer from {}/status: {e}", client.base),
                        )
                    })?;
                    print!("{}", tree_text::render(&snap, use_colour()));
                }
            }
            Command::Kill { path } => {
                let path = path.trim_matches('/');
                let body = client.post(&format!("/actors/{path}/kill")).await?;
                let line = match body.get("generation").and_then(|g| g.as_u64()) {
                    Some(g) => format!("killed {path} (generation {g})"),
                    None => format!("killed {path}"),
                };
                say(&body, line);
            }
            Command::Terminate { path } => {
                let path = path.trim_matches('/');
                let body = client.post(&format!("/actors/{path}/terminate")).await?;
                say(&body, format!("terminated {path}"));
            }
            Command::Restart { path } => {
                let path = path.trim_matches('/');
                let body = client.post(&format!("/actors/{path}/restart")).await?;
                let line = match body.get("generation").and_then(|g| g.as_u64()) {
                    Some(g) => format!("restarted {path} (generation {g})"),
                    None => format!("restarted {path}"),
                };
                say(&body, line);
            }
            Command::Retry { id } => {
                let body = client
                    .post(&format!("/messages/{}/retry", id.trim()))
                    .await?;
                let line = format!("retry scheduled for {}", text(&body["retried"]));
                say(&body, line);
            }
            Command::Redrive { dry_run } => {
                let path = if dry_run {
                    "/failed/redrive?dry_run=true"
                } else {
                    "/failed/redrive"
                };
                let body = client.post(path).await?;
                let queue = text(&body["queue"]);
                let line = if dry_run {
                    format!(
                        "{queue} holds {} messages: a re-drive would take at most {}",
                        text(&body["depth"]),
                        text(&body["would_redrive_at_most"])
                    )
                } else {
                    match body["depth_last_sampled"].as_u64() {
                        Some(n) => format!("re-driving {queue} ({n} messages when last sampled)"),
                        None => format!("re-driving {queue}"),
                    }
                };
                say(&body, line);
            }
            Command::Serve | Command::Config => unreachable!("not a client command"),
        }
        Ok(())
    })
}

/// A JSON value as a word in a line: strings without their quotes.
fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "?".into(),
        v => v.to_string(),
    }
}

fn pretty(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.trim_end().to_string(),
        v => serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()),
    }
}

/// A client of one running drover.
#[derive(Debug)]
struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Client {
    fn new(base: String, token: String) -> Result<Self, Failure> {
        let http = reqwest::Client::builder()
            .timeout(CLIENT_TIMEOUT)
            .connect_timeout(CLIENT_TIMEOUT)
            .user_agent(concat!("drover-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::new(EXIT_ERROR, format!("cannot build an HTTP client: {e}")))?;
        Ok(Client { base, token, http })
    }

    async fn get(&self, path: &str) -> Result<serde_json::Value, Failure> {
        self.send(reqwest::Method::GET, path, false).await
    }

    /// An admin call: with the bearer token.
    async fn post(&self, path: &str) -> Result<serde_json::Value, Failure> {
        self.send(reqwest::Method::POST, path, true).await
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        admin: bool,
    ) -> Result<serde_json::Value, Failure> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if admin && !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        });
        if status.is_success() {
            return Ok(body);
        }
        let mut message = format!("{method} {url}: {status}");
        let detail = match &body {
            serde_json::Value::Object(o) => o.get("error").map(|e| match e {
                serde_json::Value::String(s) => s.clone(),
                e => e.to_string(),
            }),
            serde_json::Value::String(s) if !s.trim().is_empty() => {
                Some(s.chars().take(200).collect())
            }
            _ => None,
        };
        if let Some(d) = detail {
            let _ = write!(message, ": {d}");
        }
        if let Some(wait) = retry_after {
            let _ = write!(message, " (try again in {wait} s: Retry-After)");
        }
        if status == reqwest::StatusCode::UNAUTHORIZED && admin && self.token.is_empty() {
            message.push_str(" (no token: pass --token or set admin.token / DROVER_ADMIN__TOKEN)");
        }
        Err(Failure::new(EXIT_ERROR, message))
    }

    fn transport_error(&self, e: &reqwest::Error) -> Failure {
        let cause = root_cause(e);
        let message = if e.is_connect() {
            format!("cannot reach drover at {}: {cause}", self.base)
        } else if e.is_timeout() {
            format!(
                "drover at {} did not answer within {}s",
                self.base,
                CLIENT_TIMEOUT.as_secs()
            )
        } else {
            format!("request to drover at {} failed: {cause}", self.base)
        };
        Failure::new(EXIT_ERROR, message)
    }
}

/// The innermost error of a chain ("Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Colour on a terminal, unless `NO_COLOR` is set.
fn use_colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_command_means_serve_and_globals_go_anywhere() {
        let cli = Cli::try_parse_from(["drover"]).unwrap();
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from(["drover", "kill", "root/x", "--url", "h:1", "--token", "t"])
            .unwrap();
        assert!(matches!(cli.command, Some(Command::Kill { ref path }) if path == "root/x"));
        assert_eq!(cli.url.as_deref(), Some("h:1"));
        assert_eq!(cli.token.as_deref(), Some("t"));
        let cli = Cli::try_parse_from(["drover", "terminate", "root/y"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Terminate { ref path }) if path == "root/y"));
        let cli = Cli::try_parse_from(["drover", "restart", "root/y"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Restart { ref path }) if path == "root/y"));
        let cli = Cli::try_parse_from(["drover", "redrive", "--dry-run"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Redrive { dry_run: true })
        ));
    }

    #[test]
    fn default_url_replaces_wildcards_with_loopback() {
        assert_eq!(
            default_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
        assert_eq!(default_url("[::]:9".parse().unwrap()), "http://[::1]:9");
        assert_eq!(
            default_url("10.1.2.3:80".parse().unwrap()),
            "http://10.1.2.3:80"
        );
        assert_eq!(normalize_url("127.0.0.1:1/").unwrap(), "http://127.0.0.1:1");
        assert_eq!(normalize_url("https://h:2/").unwrap(), "https://h:2");
        assert!(normalize_url("ftp://x").is_err());
        for no_host in ["http://", "https:///", "http://:8080"] {
            let e = normalize_url(no_host).expect_err(no_host);
            assert!(
                e.message.contains("no host") || e.message.contains("empty host"),
                "{no_host}: {}",
                e.message
            );
        }
    }
}
