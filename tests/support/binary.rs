//! The drover binary, spawned with only what the test sets.

use super::*;

/// The drover binary with only what the test sets: nothing from the caller's `DROVER_*`
/// environment; JSON logs.
pub fn drover_binary() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_drover"));
    for (k, _) in std::env::vars() {
        if k.starts_with("DROVER_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("DROVER_LOG__FORMAT", "json")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The binary on `env`'s configuration (written to a file), in a directory of its own. Its
/// logs go to `drover.log` there: a pipe nobody reads would fill up and block it.
pub fn spawn_binary(env: &TestEnv) -> (tokio::process::Child, std::path::PathBuf) {
    spawn_instance(env, "")
}

/// Like [`spawn_binary`], one of several instances on the same configuration: `name` keeps
/// their directories (configuration file, log) apart.
pub fn spawn_instance(env: &TestEnv, name: &str) -> (tokio::process::Child, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("drover-binary-{}{name}", env.id));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("drover.toml");
    std::fs::write(&config_file, toml::to_string(&env.config).unwrap()).unwrap();
    let log = std::fs::File::create(dir.join("drover.log")).unwrap();
    let child = drover_binary()
        .arg("--config")
        .arg(&config_file)
        .current_dir(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    (child, dir)
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
