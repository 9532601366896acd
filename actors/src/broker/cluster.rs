//! A cluster's nodes in turn: each connect starts from the node after the one used last, so
//! a reconnect after a node went away tries the others first.
//!
//! The position is kept per [`BrokerConfig::url`](super::BrokerConfig::url) string for the
//! whole process (every connection made from one configuration shares it, as the node
//! order is a property of the configuration, not of one actor incarnation).

use std::collections::HashMap;
use std::sync::LazyLock;

use parking_lot::Mutex;

static NEXT: LazyLock<Mutex<HashMap<String, usize>>> = LazyLock::new(Mutex::default);

/// The order in which to try `nodes` (indices into it) for a connect under `key`.
pub(super) fn order(key: &str, nodes: usize) -> Vec<usize> {
    if nodes == 0 {
        return Vec::new();
    }
    let start = NEXT.lock().get(key).copied().unwrap_or(0) % nodes;
    (0..nodes).map(|k| (start + k) % nodes).collect()
}

/// Node `index` of `key` was connected to: the next connect starts after it.
pub(super) fn used(key: &str, index: usize, nodes: usize) {
    if nodes > 0 {
        NEXT.lock().insert(key.to_owned(), (index + 1) % nodes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_after_the_node_used_last() {
        let key = "amqp://a,amqp://b,amqp://c (test)";
        assert_eq!(order(key, 3), [0, 1, 2]);
        used(key, 0, 3);
        assert_eq!(order(key, 3), [1, 2, 0]);
        used(key, 2, 3);
        assert_eq!(order(key, 3), [0, 1, 2]);
        used(key, 1, 3);
        assert_eq!(order(key, 3), [2, 0, 1]);
        assert_eq!(order("single (test)", 1), [0]);
        assert!(order("none (test)", 0).is_empty());
    }
}
