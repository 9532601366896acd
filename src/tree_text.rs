//! The supervision tree drawn as text, one node a line: what `GET /status?format=text` answers
//! and what `drover status` prints (coloured on a terminal), from one renderer so the two never
//! drift apart. It reads the JSON form of the server's `TreeSnapshot` through lenient mirror
//! types, so a client renders a newer server's answer too.

use std::fmt::Write as _;

use serde::Deserialize;

/// What the client reads of `GET /status` (the server's `TreeSnapshot`); lenient, so a newer
/// server with more fields still renders.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    pub taken_at_unix_ms: u64,
    pub roots: Vec<Node>,
}

/// One node of [`Snapshot`].
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Node {
    pub path: String,
    pub name: String,
    pub kind: String,
    pub status: String,
    pub restart: String,
    pub generation: u64,
    pub restarts: u64,
    pub uptime_ms: Option<u64>,
    pub next_restart_in_ms: Option<u64>,
    pub last_exits: Vec<Exit>,
    pub detail: Option<String>,
    pub supervisor: Option<Supervisor>,
    pub children: Vec<Node>,
}

/// An exit record of [`Node`].
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Exit {
    pub class: String,
    pub reason: String,
    pub at_unix_ms: u64,
}

/// A supervisor's own view of itself.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Supervisor {
    pub strategy: String,
    pub max_restarts: u32,
    pub period_ms: u64,
    pub window_used: u32,
    pub dynamic_children: usize,
    pub max_children: Option<usize>,
    pub gave_up: Option<String>,
}

const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

fn status_colour(status: &str) -> Option<&'static str> {
    match status {
        "running" => Some(GREEN),
        "backing_off" | "restarting" | "starting" => Some(YELLOW),
        "stopped" | "stopping" => Some(RED),
        _ => None,
    }
}

/// `1500` -> `1.5s`.
fn human_ms(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// The tree, one node a line: status (coloured if `colour`), generation, restarts, uptime,
/// the backoff countdown, the last exit; per supervisor its strategy and intensity window.
pub fn render(snap: &Snapshot, colour: bool) -> String {
    let paint = |code: &str, text: &str| {
        if colour {
            format!("{code}{text}{RESET}")
        } else {
            text.to_string()
        }
    };
    let mut out = String::new();
    let mut stack: Vec<(&Node, String, bool, bool)> = snap
        .roots
        .iter()
        .rev()
        .map(|r| (r, String::new(), true, true))
        .collect();
    while let Some((n, prefix, last, root)) = stack.pop() {
        let branch = match (root, last) {
            (true, _) => "",
            (false, true) => "└── ",
            (false, false) => "├── ",
        };
        let status = match status_colour(&n.status) {
            Some(c) => paint(c, &n.status),
            None => n.status.clone(),
        };
        let mut kind = n.kind.clone();
        if !n.restart.is_empty() && n.restart != "permanent" {
            let _ = write!(kind, ", {}", n.restart);
        }
        let _ = write!(
            out,
            "{prefix}{branch}{} [{kind}] {status} gen {} restarts {}",
            paint(BOLD, &n.name),
            n.generation,
            n.restarts
        );
        if let Some(s) = &n.supervisor {
            let _ = write!(
                out,
                " | {} {}/{} in {}",
                s.strategy,
                s.window_used,
                s.max_restarts,
                human_ms(s.period_ms)
            );
            if s.dynamic_children > 0 || s.max_children.is_some() {
                match s.max_children {
                    Some(max) => {
                        let _ = write!(out, " | {}/{max} dynamic", s.dynamic_children);
                    }
                    None => {
                        let _ = write!(out, " | {} dynamic", s.dynamic_children);
                    }
                }
            }
        }
        if let (Some(up), "running") = (n.uptime_ms, n.status.as_str()) {
            let _ = write!(out, " | up {}", human_ms(up));
        }
        if let Some(detail) = &n.detail {
            let _ = write!(out, " | {}", one_line(detail));
        }
        if let Some(ms) = n.next_restart_in_ms {
            let text = format!("restart in {}", human_ms(ms));
            let _ = write!(out, " | {}", paint(YELLOW, &text));
        }
        if let Some(e) = n.last_exits.last() {
            let _ = write!(out, " | last exit: {}", e.class);
            if !e.reason.is_empty() && e.reason != e.class {
                let _ = write!(out, " ({})", one_line(&e.reason));
            }
            if e.at_unix_ms > 0 && snap.taken_at_unix_ms >= e.at_unix_ms {
                let _ = write!(
                    out,
                    " {} ago",
                    human_ms(snap.taken_at_unix_ms - e.at_unix_ms)
                );
            }
        }
        if let Some(reason) = n.supervisor.as_ref().and_then(|s| s.gave_up.as_ref()) {
            let text = format!("GAVE UP: {}", one_line(reason));
            let _ = write!(out, " | {}", paint(RED, &text));
        }
        out.push('\n');
        let child_prefix = if root {
            String::new()
        } else {
            format!("{prefix}{}", if last { "    " } else { "│   " })
        };
        let count = n.children.len();
        for (i, c) in n.children.iter().enumerate().rev() {
            stack.push((c, child_prefix.clone(), i + 1 == count, false));
        }
    }
    out
}

/// Whitespace runs (newlines too) as one space: a reason stays on its node's line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The server's snapshot in the form the client reads: the same JSON, so both draw alike.
pub fn from_server(snap: &drover_actors::tree::TreeSnapshot) -> Snapshot {
    serde_json::to_value(snap)
        .and_then(serde_json::from_value)
        .expect("a TreeSnapshot serializes to what Snapshot reads")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        serde_json::from_value(serde_json::json!({
            "taken_at_unix_ms": 10_000,
            "nodes": 3,
            "roots": [{
                "path": "root", "name": "root", "kind": "supervisor", "status": "running",
                "restart": "permanent", "generation": 1, "restarts": 0, "uptime_ms": 5000,
                "last_exits": [],
                "supervisor": {"strategy": "one_for_one", "max_restarts": 10,
                               "period_ms": 60000, "window_used": 2, "dynamic_children": 0,
                               "max_children": null, "gave_up": null},
                "children": [
                    {"path": "root/flaky", "name": "flaky", "kind": "worker",
                     "status": "backing_off", "restart": "permanent", "generation": 3,
                     "restarts": 2, "next_restart_in_ms": 900,
                     "last_exits": [{"generation": 2, "class": "abnormal", "reason": "boom",
                                     "at_ms": 1, "at_unix_ms": 8_000}],
                     "children": []},
                    {"path": "root/gone", "name": "gone", "kind": "worker",
                     "status": "stopped", "restart": "transient", "generation": 1,
                     "restarts": 0, "last_exits": [], "children": []}
                ]
            }]
        }))
        .unwrap()
    }

    #[test]
    fn the_tree_shows_counts_countdown_and_last_exit() {
        let text = render(&sample(), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("root [supervisor] running gen 1 restarts 0"));
        assert!(lines[0].contains("one_for_one 2/10 in 1m00s"), "{text}");
        assert!(lines[1].starts_with("├── flaky [worker] backing_off gen 3 restarts 2"));
        assert!(lines[1].contains("restart in 900ms"), "{text}");
        assert!(
            lines[1].contains("last exit: abnormal (boom) 2.0s ago"),
            "{text}"
        );
        assert!(lines[2].starts_with("└── gone [worker, transient] stopped"));
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn statuses_are_coloured_on_a_terminal() {
        let text = render(&sample(), true);
        assert!(text.contains("\x1b[32mrunning\x1b[0m"), "{text}");
        assert!(text.contains("\x1b[33mbacking_off\x1b[0m"), "{text}");
        assert!(text.contains("\x1b[31mstopped\x1b[0m"), "{text}");
    }
}
