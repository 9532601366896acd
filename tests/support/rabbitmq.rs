//! RabbitMQ from outside: `rabbitmqctl` queries and a node of a test's own that can be
//! killed and started again.

use super::*;

/// What `rabbitmqctl list_queues` is asked for, to be read by [`parse_queue_counts`].
pub const LIST_QUEUE_COUNTS: [&str; 5] = [
    "name",
    "messages_ready",
    "messages_unacknowledged",
    "--formatter",
    "json",
];

/// Ready and unacknowledged messages of `queue` in `rabbitmqctl list_queues --formatter json`
/// output.
pub fn parse_queue_counts(out: &str, queue: &str) -> (u64, u64) {
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("cannot parse rabbitmqctl list_queues output ({e}): {out}"));
    let row = rows
        .iter()
        .find(|r| r["name"] == queue)
        .unwrap_or_else(|| panic!("queue {queue} not listed by rabbitmqctl: {out}"));
    let n = |k: &str| row[k].as_u64().unwrap_or_else(|| panic!("{k} in {row}"));
    (n("messages_ready"), n("messages_unacknowledged"))
}

/// Names of the client connections open in `vhost` (`rabbitmqctl list_connections`).
pub async fn rabbitmqctl_connections(vhost: &str) -> Vec<String> {
    let out = run_command(
        "rabbitmqctl",
        &[
            "-q",
            "list_connections",
            "vhost",
            "client_properties",
            "--formatter",
            "json",
        ],
    )
    .await;
    let rows: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap_or_else(|e| {
        panic!("cannot parse rabbitmqctl list_connections output ({e}): {out}")
    });
    rows.iter()
        .filter(|r| r["vhost"] == vhost)
        .map(|r| {
            // client_properties is a list of [key, type, value] triples.
            r["client_properties"]
                .as_array()
                .and_then(|props| {
                    props.iter().find_map(|p| {
                        (p[0] == "connection_name").then(|| p[2].as_str().map(str::to_owned))?
                    })
                })
                .unwrap_or_else(|| "(unnamed)".to_owned())
        })
        .collect()
}

/// `(messages_ready, messages_unacknowledged)` of `queue` in `vhost`, from
/// `rabbitmqctl list_queues`.
pub async fn rabbitmqctl_queue_counts(vhost: &str, queue: &str) -> (u64, u64) {
    let out = run_command(
        "rabbitmqctl",
        &[
            &["-q", "list_queues", "-p", vhost][..],
            &LIST_QUEUE_COUNTS[..],
        ]
        .concat(),
    )
    .await;
    parse_queue_counts(&out, queue)
}

/// A RabbitMQ node of one test's own (Debian's `rabbitmq-server`, on a free loopback port,
/// its data in a temporary directory), so that the test can stop and start the whole node
/// without touching the shared one every other test uses. Stopped and deleted on drop.
#[derive(Debug)]
pub struct PrivateRabbit {
    pub node: String,
    pub port: u16,
    dist_port: u16,
    dir: std::path::PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PrivateRabbit {
    /// Start the node and wait (bounded) until it serves AMQP.
    pub async fn start() -> PrivateRabbit {
        let id = Uuid::new_v4().simple().to_string();
        let host = run_command("hostname", &["-s"]).await.trim().to_owned();
        let dir = std::env::temp_dir().join(format!("drover-rabbit-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        // Its own (empty) configuration: the shared node's /etc/rabbitmq/rabbitmq.conf holds
        // a TLS listener on a fixed port that a second node could not bind.
        std::fs::write(dir.join("rabbitmq.conf"), "").unwrap();
        let rabbit = PrivateRabbit {
            node: format!("drover-{}@{host}", &id[..12]),
            port: free_port(),
            dist_port: free_port(),
            dir,
        };
        // The server drops to the `rabbitmq` user when started as root: it must own its data.
        let _ = std::process::Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&rabbit.dir)
            .status();
        rabbit.boot().await;
        rabbit
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn server(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new("rabbitmq-server");
        let d = |p: &str| self.dir.join(p).display().to_string();
        cmd.arg("-detached")
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf"))
            .env("RABBITMQ_PID_FILE", d("pid"));
        cmd
    }

    /// Start the node (again: same name, same data) and wait until it serves AMQP.
    pub async fn boot(&self) {
        let status = self.server().status().expect("rabbitmq-server runs");
        assert!(status.success(), "rabbitmq-server -detached: {status}");
        let node = self.node.clone();
        wait_for(
            &format!("RabbitMQ node {node} to boot"),
            Duration::from_secs(90),
            || async {
                let ok = tokio::process::Command::new("rabbitmqctl")
                    .args(["-q", "-n", &node, "await_startup", "--timeout", "5"])
                    .kill_on_drop(true)
                    .output()
                    .await
                    .is_ok_and(|o| o.status.success());
                if ok && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    Ok(())
                } else {
                    Err("not yet".to_owned())
                }
            },
        )
        .await;
    }

    /// Stop the whole node (every connection cut, the Erlang VM gone).
    pub async fn stop(&self) {
        run_command("rabbitmqctl", &["-q", "-n", &self.node, "stop"]).await;
    }

    /// `rabbitmqctl -n <node> args...`; its stdout.
    pub async fn ctl(&self, args: &[&str]) -> String {
        let mut all = vec!["-q", "-n", self.node.as_str()];
        all.extend_from_slice(args);
        run_command("rabbitmqctl", &all).await
    }

    /// Ready and unacknowledged messages of `queue` on this node's default vhost.
    pub async fn queue_counts(&self, queue: &str) -> (u64, u64) {
        let out = self
            .ctl(&[&["list_queues"][..], &LIST_QUEUE_COUNTS[..]].concat())
            .await;
        parse_queue_counts(&out, queue)
    }

    /// Kill the node's Erlang VM with SIGKILL, as a crash or a power cut would: only what it
    /// had written to disk (confirmed persistent messages) survives. Waits until it is gone.
    pub async fn kill(&self) {
        let pid = std::fs::read_to_string(self.dir.join("pid")).expect("the node's pid file");
        let pid = pid.trim().to_owned();
        run_command("kill", &["-KILL", &pid]).await;
        wait_for(
            "the RabbitMQ node to die",
            Duration::from_secs(30),
            || async {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                    Ok(())
                } else {
                    Err("still listening".to_owned())
                }
            },
        )
        .await;
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node, "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
