//! What the system keeps after its run, per sled tree and per JetStream stream, divided
//! by the orders it ran: the retained side of the byte budget in docs/BENCHMARKS.md.
//!
//! Read after the services stopped (sled opens a database for one process only). It
//! counts what is stored, not what was written on the way: an outbox entry written and
//! removed, or a record replaced, shows in neither; the document adds those from the
//! code.

use std::path::Path;

use async_nats::jetstream::Context;
use futures::StreamExt;
use serde::Serialize;

use crate::BenchError;

/// One sled tree of one service's database.
#[derive(Debug, Clone, Serialize)]
pub struct TreeCensus {
    /// The database's directory under the data directory (the service or instance).
    pub db: String,
    pub tree: String,
    pub keys: u64,
    pub key_bytes: u64,
    pub value_bytes: u64,
}

/// One stream (events, dead letters, a KV bucket's stream).
#[derive(Debug, Clone, Serialize)]
pub struct StreamCensus {
    pub stream: String,
    pub messages: u64,
    pub bytes: u64,
}

/// Everything retained, and the orders it was retained for.
#[derive(Debug, Clone, Serialize)]
pub struct Census {
    pub orders: u64,
    pub trees: Vec<TreeCensus>,
    pub streams: Vec<StreamCensus>,
}

impl Census {
    /// Reads every sled database under `data_dir` and every stream's state.
    pub async fn take(orders: u64, data_dir: &Path, js: &Context) -> Result<Census, BenchError> {
        let dir = data_dir.to_owned();
        let trees = tokio::task::spawn_blocking(move || sled_census(&dir))
            .await
            .map_err(|e| BenchError::io("counting the sled trees", std::io::Error::other(e)))??;
        Ok(Census {
            orders,
            trees,
            streams: stream_census(js).await?,
        })
    }

    /// The table: per tree and per stream, entries and bytes per order.
    pub fn render(&self) -> String {
        let per_order = |n: u64| n as f64 / self.orders.max(1) as f64;
        let mut out = format!(
            "\nretained after the run, per order ({} orders; see docs/BENCHMARKS.md, byte budget):\n",
            self.orders
        );
        out.push_str(
            "  sled db / tree                     keys/order  key B/order  value B/order\n",
        );
        for t in &self.trees {
            out.push_str(&format!(
                "  {:<34} {:>10.2} {:>12.1} {:>14.1}\n",
                format!("{}/{}", t.db, t.tree),
                per_order(t.keys),
                per_order(t.key_bytes),
                per_order(t.value_bytes)
            ));
        }
        out.push_str("  stream                             msgs/order      B/order\n");
        for s in &self.streams {
            out.push_str(&format!(
                "  {:<34} {:>10.2} {:>12.1}\n",
                s.stream,
                per_order(s.messages),
                per_order(s.bytes)
            ));
        }
        out
    }
}

/// Every tree of every sled database under `dir` (a directory holding sled's `conf`).
fn sled_census(dir: &Path) -> Result<Vec<TreeCensus>, BenchError> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(next) = pending.pop() {
        if next.join("conf").is_file() && next.join("db").is_file() {
            found.push(next);
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        pending.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir()),
        );
    }
    found.sort();
    let mut trees = Vec::new();
    for path in found {
        let db = sled::open(&path)
            .map_err(|e| BenchError::io("opening a service database", std::io::Error::other(e)))?;
        let label = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .display()
            .to_string();
        let mut names = db.tree_names();
        names.sort();
        for name in names {
            let tree = db
                .open_tree(&name)
                .map_err(|e| BenchError::io("opening a tree", std::io::Error::other(e)))?;
            let mut census = TreeCensus {
                db: label.clone(),
                tree: String::from_utf8_lossy(&name).into_owned(),
                keys: 0,
                key_bytes: 0,
                value_bytes: 0,
            };
            for (key, value) in tree.iter().flatten() {
                census.keys += 1;
                census.key_bytes += key.len() as u64;
                census.value_bytes += value.len() as u64;
            }
            trees.push(census);
        }
    }
    Ok(trees)
}

/// Every stream's message count and bytes, as the server reports them.
async fn stream_census(js: &Context) -> Result<Vec<StreamCensus>, BenchError> {
    let mut names: Vec<String> = js
        .stream_names()
        .filter_map(|n| async { n.ok() })
        .collect()
        .await;
    names.sort();
    let mut streams = Vec::new();
    for name in names {
        let Ok(mut stream) = js.get_stream(&name).await else {
            continue;
        };
        let Ok(info) = stream.info().await else {
            continue;
        };
        streams.push(StreamCensus {
            stream: name,
            messages: info.state.messages,
            bytes: info.state.bytes,
        });
    }
    Ok(streams)
}
