//! Named crash points for chaos tests: `SHOP_CRASHPOINT=<name>:<probability>[,…]` aborts the process there.
//!
//! They exist so tests can hit exactly the windows that matter (after a commit
//! but before the ack, after a publish but before the outbox entry is removed…).
//! Unset, a crash point costs one atomic load. Never on by default.

use std::collections::HashMap;
use std::sync::OnceLock;

/// After the sled group commit is durable, before any message of the batch is acked.
pub const AFTER_COMMIT_BEFORE_ACK: &str = "after_commit_before_ack";
/// Between two transactions of one group commit, before the flush.
pub const MID_GROUP_COMMIT: &str = "mid_group_commit";
/// After the outbox relay got its PubAck, before it removed the outbox entry.
pub const AFTER_PUBLISH_BEFORE_OUTBOX_REMOVE: &str = "after_publish_before_outbox_remove";

/// The runtime's own crash points. Services name theirs next to the code they guard
/// (payment's gateway call, for one); a chaos driver joins the lists.
pub const ALL: &[&str] = &[
    AFTER_COMMIT_BEFORE_ACK,
    MID_GROUP_COMMIT,
    AFTER_PUBLISH_BEFORE_OUTBOX_REMOVE,
];

/// The environment variable read once at first use.
pub const ENV: &str = "SHOP_CRASHPOINT";

fn configured() -> &'static HashMap<String, f64> {
    static POINTS: OnceLock<HashMap<String, f64>> = OnceLock::new();
    POINTS.get_or_init(|| parse(&std::env::var(ENV).unwrap_or_default()))
}

/// Parses `name:probability[,name:probability]`; a bare name means probability 1.
pub fn parse(spec: &str) -> HashMap<String, f64> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .filter_map(|item| {
            let (name, p) = match item.split_once(':') {
                Some((n, p)) => (n.trim(), p.trim().parse::<f64>().ok()?),
                None => (item.trim(), 1.0),
            };
            Some((name.to_owned(), p.clamp(0.0, 1.0)))
        })
        .collect()
}

/// Aborts the process if `name` is configured and the dice say so.
#[inline]
pub fn hit(name: &str) {
    let points = configured();
    if points.is_empty() {
        return;
    }
    if let Some(p) = points.get(name).or_else(|| points.get("*")) {
        if rand::random::<f64>() < *p {
            // stderr is unbuffered: the harness counts hits from this line.
            eprintln!("SHOP_CRASHPOINT hit {name}");
            std::process::abort();
        }
    }
}
