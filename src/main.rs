//! The drover binary: parse the command line, load config, run until a signal.

use std::path::PathBuf;
use std::process::ExitCode;

use drover::config::{CONFIG_FILE_ENV, Config};
use drover::exit::{EXIT_CONFIG, EXIT_OK};

const USAGE: &str = "usage: drover [--config FILE] [serve|config]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut file = std::env::var_os(CONFIG_FILE_ENV).map(PathBuf::from);
    let mut command = "serve".to_string();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => match args.next() {
                Some(f) => file = Some(PathBuf::from(f)),
                None => return fail(EXIT_CONFIG, "--config needs a file"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "serve" | "config" => command = a,
            other => return fail(EXIT_CONFIG, &format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    let config = match Config::load(file.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, &e.to_string()),
    };
    if command == "config" {
        print!("{}", config.redacted_toml());
        return ExitCode::SUCCESS;
    }
    drover::telemetry::init(&config.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => return fail(1, &format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(drover::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::from(EXIT_OK as u8),
        Err(e) => fail(e.exit_code(), &e.to_string()),
    }
}

fn fail(code: i32, message: &str) -> ExitCode {
    eprintln!("drover: {message}");
    ExitCode::from(code as u8)
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
