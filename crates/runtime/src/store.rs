//! The sled side of exactly-once effects: state, inbox and outbox written in one transaction.
//!
//! A consumed event is applied at most once because its id goes into the
//! inbox in the same transaction as the state change and the outgoing events;
//! the outgoing events reach NATS at least once because they sit in the outbox
//! until the relay got their PubAck. Together: effects happen exactly once.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Db, IVec, Transactional, Tree};

use crate::outbox_entry::{encode_entry, MalformedEntry, OutboxMessage};
use crate::RuntimeError;

const INBOX: &str = "inbox";
/// sled's page cache per service (see `Store::open`).
const CACHE_BYTES: u64 = 24 * 1024 * 1024;
const OUTBOX: &str = "outbox";

/// A handle on one of the service's own trees, handed out by [`Store::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeId(usize);

/// Why a transaction was aborted on purpose; none of these passes on a retry.
#[derive(Debug, thiserror::Error)]
pub enum TxAbort {
    /// The input cannot be applied; the caller dead-letters it with this reason.
    #[error("refused: {0}")]
    Reject(String),
    /// A stored record does not decode: a bug or disk damage, never the input's fault.
    #[error("stored record {record} does not decode: {source}")]
    Corrupt {
        record: String,
        #[source]
        source: serde_json::Error,
    },
    /// A value to store does not serialise.
    #[error("cannot encode a record: {0}")]
    Encode(#[source] serde_json::Error),
}

impl TxAbort {
    /// Always `false`: an abort is decided by the input or the stored data, which a
    /// retry sees again unchanged.
    pub fn is_transient(&self) -> bool {
        false
    }
}

impl From<TxAbort> for ApplyError {
    fn from(abort: TxAbort) -> ApplyError {
        match abort {
            TxAbort::Reject(reason) => ApplyError::Rejected(reason),
            TxAbort::Corrupt { record, source } => ApplyError::Failed(RuntimeError::Corrupt {
                record,
                source: Box::new(source),
            }),
            TxAbort::Encode(source) => ApplyError::Failed(RuntimeError::Encode {
                what: "a record".to_owned(),
                source,
            }),
        }
    }
}

pub type TxResult<T> = Result<T, ConflictableTransactionError<TxAbort>>;

/// Aborts the transaction because the input cannot be applied.
pub fn reject<T>(reason: impl Into<String>) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(TxAbort::Reject(
        reason.into(),
    )))
}

/// What happened to a unit of work.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied<T> {
    Done(T),
    /// The inbox already held this event id: nothing was done again.
    Duplicate,
}

/// Why a unit of work did not commit.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The work refused its input (see [`reject`]); the reason is for the dead letter.
    #[error("refused: {0}")]
    Rejected(String),
    /// The store failed; [`RuntimeError::is_transient`] says whether to try again.
    #[error(transparent)]
    Failed(#[from] RuntimeError),
}

impl ApplyError {
    /// Whether applying the same input again can succeed: never for a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            ApplyError::Rejected(_) => false,
            ApplyError::Failed(e) => e.is_transient(),
        }
    }
}

/// The transactional view handed to domain glue: typed reads and writes plus `publish`.
pub struct Tx<'a> {
    view: &'a [TransactionalTree],
    // Messages queued by `publish`, encoded; written as one outbox entry at the end.
    outgoing: std::cell::RefCell<Vec<Vec<u8>>>,
}

impl<'a> Tx<'a> {
    fn new(view: &'a [TransactionalTree]) -> Tx<'a> {
        Tx {
            view,
            outgoing: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Writes the queued messages as one outbox entry (none if nothing was queued).
    fn write_outbox(&self) -> TxResult<()> {
        let outgoing = self.outgoing.borrow();
        if outgoing.is_empty() {
            return Ok(());
        }
        let outbox = &self.view[1];
        let key = outbox.generate_id()?.to_be_bytes();
        outbox.insert(&key, encode_entry(&outgoing))?;
        Ok(())
    }

    fn tree(&self, id: TreeId) -> &TransactionalTree {
        &self.view[id.0]
    }

    pub fn get(&self, tree: TreeId, key: &[u8]) -> TxResult<Option<IVec>> {
        Ok(self.tree(tree).get(key)?)
    }

    pub fn insert(&self, tree: TreeId, key: &[u8], value: &[u8]) -> TxResult<()> {
        self.tree(tree).insert(key, value)?;
        Ok(())
    }

    pub fn remove(&self, tree: TreeId, key: &[u8]) -> TxResult<()> {
        self.tree(tree).remove(key)?;
        Ok(())
    }

    pub fn get_json<T: DeserializeOwned>(&self, tree: TreeId, key: &[u8]) -> TxResult<Option<T>> {
        match self.get(tree, key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| {
                ConflictableTransactionError::Abort(TxAbort::Corrupt {
                    record: String::from_utf8_lossy(key).into_owned(),
                    source,
                })
            }),
        }
    }

    pub fn put_json<T: Serialize>(&self, tree: TreeId, key: &[u8], value: &T) -> TxResult<()> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| ConflictableTransactionError::Abort(TxAbort::Encode(e)))?;
        self.insert(tree, key, &bytes)
    }

    /// Queues a message in the outbox; the relay publishes it after the commit.
    pub fn publish(&self, message: &OutboxMessage) -> TxResult<()> {
        self.outgoing.borrow_mut().push(message.encode());
        Ok(())
    }
}

/// Records `key` in the inbox unless it is there already; `false` means a duplicate.
/// Without a key there is nothing to deduplicate on, so the work always runs.
fn first_time(inbox: &TransactionalTree, key: Option<&str>, stamp: &[u8]) -> TxResult<bool> {
    let Some(key) = key else { return Ok(true) };
    if inbox.get(key.as_bytes())?.is_some() {
        return Ok(false);
    }
    inbox.insert(key.as_bytes(), stamp)?;
    Ok(true)
}

/// A service's sled database: inbox, outbox and the service's own trees.
pub struct Store {
    db: Db,
    trees: Vec<Tree>,
    names: Vec<String>,
    // sled 0.34's flush_async deadlocks with many concurrent callers (sled #1308);
    // flushing through one lock in a blocking thread avoids it.
    flush_lock: Arc<tokio::sync::Mutex<()>>,
    // Commits counted, and the count covered by the last completed flush: equal means
    // everything committed so far is on disk.
    committed: std::sync::atomic::AtomicU64,
    durable: std::sync::atomic::AtomicU64,
    // Held for read while a transaction commits and is counted, for write to read the
    // count: so an entry visible in the outbox is always already counted, and a flush
    // that finds nothing new to cover can be skipped safely.
    commit_gate: std::sync::RwLock<()>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("trees", &self.names).finish()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An outbox key (a sled-generated id, big-endian) as a number, for error messages.
fn u64_key(key: &[u8]) -> String {
    match <[u8; 8]>::try_from(key) {
        Ok(bytes) => u64::from_be_bytes(bytes).to_string(),
        Err(_) => String::from_utf8_lossy(key).into_owned(),
    }
}

impl Store {
    /// Opens (or creates) the database at `dir` with the service's own trees.
    pub fn open(dir: &Path, tree_names: &[&str]) -> Result<(Store, Vec<TreeId>), RuntimeError> {
        std::fs::create_dir_all(dir).map_err(|source| RuntimeError::DataDir {
            path: dir.to_owned(),
            source,
        })?;
        let db = sled::Config::new()
            .path(dir)
            // Small on purpose: sled's RSS runs at 2–3× this figure, and what the services
            // touch is recent (time-ordered ids put every new key at the right edge of its
            // tree), so a bigger cache buys little and costs memory at 1M stored orders.
            .cache_capacity(CACHE_BYTES)
            .open()?;
        let mut names = vec![INBOX.to_owned(), OUTBOX.to_owned()];
        names.extend(tree_names.iter().map(|n| (*n).to_owned()));
        let trees = names
            .iter()
            .map(|n| db.open_tree(n))
            .collect::<Result<Vec<_>, _>>()?;
        let ids = (2..names.len()).map(TreeId).collect();
        Ok((
            Store {
                db,
                trees,
                names,
                flush_lock: Arc::new(tokio::sync::Mutex::new(())),
                committed: std::sync::atomic::AtomicU64::new(0),
                durable: std::sync::atomic::AtomicU64::new(0),
                commit_gate: std::sync::RwLock::new(()),
            },
            ids,
        ))
    }

    /// Runs `work` in one transaction with the inbox, outbox and service trees.
    ///
    /// With a `dedupe_key`, the work runs only if that key is not in the inbox
    /// yet, and the key is recorded in the same transaction. The closure may run
    /// more than once when sled retries a conflicting transaction, so it must be pure.
    pub fn apply<T>(
        &self,
        dedupe_key: Option<&str>,
        work: impl Fn(&Tx<'_>) -> TxResult<T>,
    ) -> Result<Applied<T>, ApplyError> {
        let stamp = now_ms().to_be_bytes();
        let _gate = self.commit_gate.read().unwrap_or_else(|p| p.into_inner());
        let result = self.trees.as_slice().transaction(|view| {
            if !first_time(&view[0], dedupe_key, &stamp)? {
                return Ok(Applied::Duplicate);
            }
            let tx = Tx::new(view);
            let done = work(&tx)?;
            tx.write_outbox()?;
            Ok(Applied::Done(done))
        });
        match result {
            Ok(applied) => {
                self.committed
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(applied)
            }
            Err(TransactionError::Abort(abort)) => Err(abort.into()),
            Err(TransactionError::Storage(e)) => Err(ApplyError::Failed(e.into())),
        }
    }

    /// Runs `work` for every item in **one** transaction, each item deduplicated by its
    /// own inbox key; returns one outcome per item, in order.
    ///
    /// Why one transaction: sled 0.34 rolls its IO buffer twice per transaction (and
    /// per `Tree::apply_batch`) in `PageCache::pin_log`, i.e. every transaction costs
    /// two log writes with `sync_file_range` on sled's IO threads, whatever its size.
    /// Per event that was most of a service's CPU (docs/BENCHMARKS.md, v4); per pulled
    /// batch it is noise. Items see each other's writes (sled's transactional view reads
    /// its own pending writes), so the batch behaves like its items applied in order.
    ///
    /// If any item is refused (or the batch fails), nothing of the batch is committed and
    /// every item is applied again in a transaction of its own, so one bad event only
    /// costs its own outcome.
    pub fn apply_batch<I, T>(
        &self,
        items: &[I],
        dedupe_key: impl Fn(&I) -> Option<&str>,
        work: impl Fn(&Tx<'_>, &I) -> TxResult<T>,
    ) -> Vec<Result<Applied<T>, ApplyError>> {
        if items.len() > 1 {
            let stamp = now_ms().to_be_bytes();
            let _gate = self.commit_gate.read().unwrap_or_else(|p| p.into_inner());
            let result = self.trees.as_slice().transaction(|view| {
                let inbox = &view[0];
                let tx = Tx::new(view);
                let mut outcomes = Vec::with_capacity(items.len());
                for item in items {
                    if !first_time(inbox, dedupe_key(item), &stamp)? {
                        outcomes.push(Applied::Duplicate);
                        continue;
                    }
                    outcomes.push(Applied::Done(work(&tx, item)?));
                }
                tx.write_outbox()?;
                Ok(outcomes)
            });
            if let Ok(outcomes) = result {
                self.committed
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return outcomes.into_iter().map(Ok).collect();
            }
        }
        items
            .iter()
            .map(|item| self.apply(dedupe_key(item), |tx| work(tx, item)))
            .collect()
    }

    /// Makes every committed transaction durable (the group-commit flush).
    pub async fn flush(&self) -> Result<(), RuntimeError> {
        let wanted = self.committed_now();
        let _guard = self.flush_lock.lock().await;
        // Another flush (the consumer's group commit, say) may already cover everything
        // this caller committed or saw: then there is nothing to wait for.
        if self.durable.load(std::sync::atomic::Ordering::SeqCst) >= wanted {
            return Ok(());
        }
        let covered = self.committed_now();
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush()).await??;
        self.durable
            .fetch_max(covered, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Every commit so far, counted once no transaction is half-way through committing.
    fn committed_now(&self) -> u64 {
        let _gate = self.commit_gate.write().unwrap_or_else(|p| p.into_inner());
        self.committed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Flushes without an async runtime, for shutdown paths and tests.
    pub fn flush_blocking(&self) -> Result<(), RuntimeError> {
        let covered = self.committed_now();
        self.db.flush()?;
        self.durable
            .fetch_max(covered, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Whether every transaction committed so far has been flushed to disk.
    pub fn all_durable(&self) -> bool {
        self.durable.load(std::sync::atomic::Ordering::SeqCst)
            >= self.committed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A service tree, for reads and scans outside transactions.
    pub fn tree(&self, id: TreeId) -> &Tree {
        &self.trees[id.0]
    }

    /// Reads one JSON record outside a transaction.
    pub fn read_json<T: DeserializeOwned>(
        &self,
        id: TreeId,
        key: &[u8],
    ) -> Result<Option<T>, RuntimeError> {
        match self.tree(id).get(key)? {
            None => Ok(None),
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|source| RuntimeError::Corrupt {
                        record: String::from_utf8_lossy(key).into_owned(),
                        source: Box::new(source),
                    })
            }
        }
    }

    /// Whether an event id was already processed.
    pub fn inbox_contains(&self, key: &str) -> Result<bool, RuntimeError> {
        Ok(self.trees[0].contains_key(key.as_bytes())?)
    }

    /// Forgets processed event ids older than `max_age_ms`; returns how many were removed.
    ///
    /// Safe once the streams no longer hold those events (their max age is 7 days):
    /// nothing can redeliver them any more.
    pub fn prune_inbox(&self, max_age_ms: u64) -> Result<usize, RuntimeError> {
        let cutoff = now_ms().saturating_sub(max_age_ms);
        let mut removed = 0;
        for item in self.trees[0].iter() {
            let (key, stamp) = item?;
            let at = stamp
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX);
            if at <= cutoff {
                self.trees[0].remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Number of processed event ids remembered.
    pub fn inbox_len(&self) -> usize {
        self.trees[0].len()
    }

    /// The oldest outbox entries, in the order they were written, each with its messages;
    /// whole entries until at least `max` messages (or the outbox's end) are reached.
    #[allow(clippy::type_complexity)]
    pub fn outbox_batch(
        &self,
        max: usize,
    ) -> Result<Vec<(IVec, Vec<OutboxMessage>)>, RuntimeError> {
        let mut out = Vec::new();
        let mut messages = 0;
        for item in self.trees[1].iter() {
            if messages >= max {
                break;
            }
            let (key, value) = item?;
            let entry =
                OutboxMessage::decode_entry(&value).ok_or_else(|| RuntimeError::Corrupt {
                    record: format!("outbox/{}", u64_key(&key)),
                    source: Box::new(MalformedEntry),
                })?;
            messages += entry.len();
            out.push((key, entry));
        }
        Ok(out)
    }

    pub fn outbox_remove(&self, key: &[u8]) -> Result<(), RuntimeError> {
        self.trees[1].remove(key)?;
        Ok(())
    }

    /// Removes published entries.
    ///
    /// Plain removes, not a `sled::Batch`: a batch pins sled's log (two IO-buffer
    /// writes, see [`Store::apply_batch`]), and removal needs no atomicity — an entry
    /// left behind by a crash is published again and dropped by JetStream's dedupe.
    pub fn outbox_remove_all(&self, keys: &[IVec]) -> Result<(), RuntimeError> {
        for key in keys {
            self.trees[1].remove(key)?;
        }
        Ok(())
    }

    /// Outbox entries waiting: committed transactions whose messages are not all published.
    pub fn outbox_len(&self) -> usize {
        self.trees[1].len()
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}
