//! The sled side of exactly-once effects: state, inbox and outbox written in one transaction.
//!
//! A consumed event is applied at most once because its id goes into the
//! inbox in the same transaction as the state change and the outgoing events;
//! the outgoing events reach NATS at least once because they sit in the outbox
//! until the relay got their PubAck. Together: effects happen exactly once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::{Db, IVec, Transactional, Tree};

use crate::outbox_entry::{encode_entry, encode_entry_v2, Entry, MalformedEntry, OutboxMessage};
use crate::RuntimeError;

const INBOX: &str = "inbox";
/// Per entity (order id, or what a service keys its records by): the event ids applied to
/// it and the last outbox entry that changed it, for its changelog record.
const ENTITIES: &str = "entities";
/// How many applied event ids an entity's record remembers. Redeliveries only ever
/// concern recent events (a message is acked once its record is stored), so this bounds
/// a long-lived entity's record without losing a deduplication that matters.
const APPLIED_IDS_KEPT: usize = 64;
/// Where the store's random identity is kept (sled's default tree).
const STORE_ID_KEY: &[u8] = b"shop.store_id";
/// Present while the store is closed after an orderly shutdown; removed at open. A store
/// opened without it was not closed cleanly: its last commits may be lost, so every
/// partition is restored from the changelog ([`Store::open`]).
const CLEAN_KEY: &[u8] = b"shop.clean";
/// The prefix of the per-partition takeover markers ([`Store::partition_marker`]).
const MARKER_PREFIX: &str = "shop.partition.";
/// Trees the runtime owns, before the service's own.
const RUNTIME_TREES: usize = 3;
/// sled's page cache per service (see `Store::open`).
const CACHE_BYTES: u64 = 24 * 1024 * 1024;
const OUTBOX: &str = "outbox";

/// A handle on one of the service's own trees, handed out by [`Store::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeId(usize);

/// One item's outcome, with the outbox entry that holds its messages and changes (shared
/// by the items of one transaction).
pub type EntryOutcome<T> = Result<(Applied<T>, Option<u64>), ApplyError>;

/// One batch's outcomes, in item order, as [`Store::apply_grouped`] reports them.
pub type BatchOutcomes = Vec<EntryOutcome<()>>;

/// A batch of items to apply in a transaction, type-erased so that batches of different
/// consumers can be committed together ([`Store::apply_grouped`]). `apply` may run more
/// than once when sled retries a conflicting transaction, so it must be pure.
pub trait BatchWork: Send {
    /// How many items the batch has.
    fn len(&self) -> usize;
    /// Whether the batch is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The inbox key item `i` is deduplicated by, if any.
    fn key(&self, i: usize) -> Option<&str>;
    /// Applies item `i`.
    fn apply(&self, tx: &Tx<'_>, i: usize) -> TxResult<()>;
}

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

/// The handles [`Store::open`] gives a service's `count` own trees: they follow the
/// runtime's trees. Known before the store opens, so the service can describe its
/// entities to the host that opens it.
pub fn service_tree_ids(count: usize) -> Vec<TreeId> {
    (RUNTIME_TREES..RUNTIME_TREES + count).map(TreeId).collect()
}

/// Decodes a restored record's data inside a transaction; a record that does not decode
/// aborts it as corrupt.
pub fn from_value<T: DeserializeOwned>(record: &str, value: &serde_json::Value) -> TxResult<T> {
    T::deserialize(value).map_err(|source| {
        ConflictableTransactionError::Abort(TxAbort::Corrupt {
            record: record.to_owned(),
            source,
        })
    })
}

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

/// What a partitioned store needs to know about its entities.
pub type PartitionOf = Arc<dyn Fn(&str) -> u32 + Send + Sync>;

/// The bookkeeping of one entity in the runtime's `entities` tree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct EntityMeta {
    /// Event ids applied to this entity (the most recent [`APPLIED_IDS_KEPT`]).
    pub applied: Vec<String>,
    /// The outbox entry of the last transaction that changed it (0: none pending).
    pub entry: u64,
}

/// The transactional view handed to domain glue: typed reads and writes plus `publish`.
pub struct Tx<'a> {
    view: &'a [TransactionalTree],
    // Messages queued by `publish`, encoded; written as one outbox entry at the end.
    outgoing: std::cell::RefCell<Vec<Vec<u8>>>,
    // Entities touched by the whole transaction, and by the item being applied.
    touched: std::cell::RefCell<Vec<String>>,
    item_touched: std::cell::RefCell<Vec<String>>,
    // (entity, event id): the ids to remember on each item's first touched entity.
    applied: std::cell::RefCell<Vec<(String, String)>>,
}

impl<'a> Tx<'a> {
    fn new(view: &'a [TransactionalTree]) -> Tx<'a> {
        Tx {
            view,
            outgoing: std::cell::RefCell::new(Vec::new()),
            touched: std::cell::RefCell::new(Vec::new()),
            item_touched: std::cell::RefCell::new(Vec::new()),
            applied: std::cell::RefCell::new(Vec::new()),
        }
    }

    /// Says that this transaction reads or changes `entity` (an order id, say): its
    /// changelog record is published after the commit, and the event being applied is
    /// remembered on the first entity it touches. Every entity of one transaction must
    /// be in the same partition.
    pub fn touch(&self, entity: &str) {
        let mut touched = self.touched.borrow_mut();
        if !touched.iter().any(|e| e == entity) {
            touched.push(entity.to_owned());
        }
        let mut item = self.item_touched.borrow_mut();
        if !item.iter().any(|e| e == entity) {
            item.push(entity.to_owned());
        }
    }

    /// Starts the next outbox entry of a transaction that writes several (a group of
    /// batches committed together, [`Store::apply_grouped`]): what the previous entry
    /// queued and touched is written already.
    fn next_entry(&self) {
        self.outgoing.borrow_mut().clear();
        self.touched.borrow_mut().clear();
        self.item_touched.borrow_mut().clear();
        self.applied.borrow_mut().clear();
    }

    /// Starts an item of a batch.
    fn begin_item(&self) {
        self.item_touched.borrow_mut().clear();
    }

    /// Ends an item applied under `event_id`: remembers it on its first touched entity.
    fn end_item(&self, event_id: Option<&str>) {
        if let (Some(id), Some(entity)) = (event_id, self.item_touched.borrow().first()) {
            self.applied
                .borrow_mut()
                .push((entity.clone(), id.to_owned()));
        }
    }

    /// Writes the queued messages as one outbox entry, and the touched entities'
    /// bookkeeping; returns the entry's key (none if nothing was queued or touched).
    fn write_outbox(&self, partition_of: Option<&PartitionOf>) -> TxResult<Option<u64>> {
        let outgoing = self.outgoing.borrow();
        let touched = self.touched.borrow();
        let partitioned = partition_of.filter(|_| !touched.is_empty());
        if outgoing.is_empty() && partitioned.is_none() {
            return Ok(None);
        }
        let outbox = &self.view[1];
        let id = outbox.generate_id()?;
        let key = id.to_be_bytes();
        let Some(partition_of) = partitioned else {
            outbox.insert(&key, encode_entry(&outgoing))?;
            return Ok(Some(id));
        };
        let partition = partition_of(&touched[0]);
        if let Some(other) = touched.iter().find(|e| partition_of(e) != partition) {
            return Err(ConflictableTransactionError::Abort(TxAbort::Reject(
                format!(
                    "one transaction touched entities of two partitions ({} and {other})",
                    touched[0]
                ),
            )));
        }
        outbox.insert(&key, encode_entry_v2(partition, &touched, &outgoing))?;
        let entities = &self.view[2];
        let applied = self.applied.borrow();
        for entity in touched.iter() {
            let mut meta: EntityMeta = match entities.get(entity.as_bytes())? {
                Some(bytes) => serde_json::from_slice(&bytes).map_err(|source| {
                    ConflictableTransactionError::Abort(TxAbort::Corrupt {
                        record: format!("entities/{entity}"),
                        source,
                    })
                })?,
                None => EntityMeta::default(),
            };
            meta.applied.extend(
                applied
                    .iter()
                    .filter(|(e, _)| e == entity)
                    .map(|(_, id)| id.clone()),
            );
            let excess = meta.applied.len().saturating_sub(APPLIED_IDS_KEPT);
            meta.applied.drain(..excess);
            meta.entry = id;
            let bytes = serde_json::to_vec(&meta)
                .map_err(|e| ConflictableTransactionError::Abort(TxAbort::Encode(e)))?;
            entities.insert(entity.as_bytes(), bytes)?;
        }
        Ok(Some(id))
    }

    /// The runtime's bookkeeping of `entity`, as this transaction sees it.
    pub fn entity_meta(&self, entity: &str) -> TxResult<Option<EntityMeta>> {
        match self.view[2].get(entity.as_bytes())? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|source| {
                ConflictableTransactionError::Abort(TxAbort::Corrupt {
                    record: format!("entities/{entity}"),
                    source,
                })
            }),
        }
    }

    /// Replaces the bookkeeping of `entity` (a restore), and marks its ids as processed.
    pub fn restore_entity_meta(&self, entity: &str, applied: &[String]) -> TxResult<()> {
        let stamp = now_ms().to_be_bytes();
        for id in applied {
            self.view[0].insert(id.as_bytes(), &stamp)?;
        }
        let meta = EntityMeta {
            applied: applied.to_vec(),
            entry: 0,
        };
        let bytes = serde_json::to_vec(&meta)
            .map_err(|e| ConflictableTransactionError::Abort(TxAbort::Encode(e)))?;
        self.view[2].insert(entity.as_bytes(), bytes)?;
        Ok(())
    }

    /// Forgets the bookkeeping of `entity` and the ids applied to it (a purge).
    pub fn forget_entity_meta(&self, entity: &str) -> TxResult<()> {
        if let Some(meta) = self.entity_meta(entity)? {
            for id in &meta.applied {
                self.view[0].remove(id.as_bytes())?;
            }
        }
        self.view[2].remove(entity.as_bytes())?;
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

/// Applies `items` in order inside `tx`, each deduplicated by its inbox key: the item
/// loop of a batch, shared by [`Store::apply_batch_entries`] and [`Store::apply_grouped`].
fn apply_items<I, T>(
    tx: &Tx<'_>,
    stamp: &[u8],
    items: &[I],
    dedupe_key: &impl Fn(&I) -> Option<&str>,
    work: &impl Fn(&Tx<'_>, &I) -> TxResult<T>,
) -> TxResult<Vec<Applied<T>>> {
    let mut outcomes = Vec::with_capacity(items.len());
    for item in items {
        let key = dedupe_key(item);
        if !first_time(&tx.view[0], key, stamp)? {
            outcomes.push(Applied::Duplicate);
            continue;
        }
        tx.begin_item();
        outcomes.push(Applied::Done(work(tx, item)?));
        tx.end_item(key);
    }
    Ok(outcomes)
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

/// The open sled database and its trees; replaced whole when the store is reopened
/// after a storage fault ([`Store::reopen`]).
struct Opened {
    db: Db,
    trees: Vec<Tree>,
}

/// A storage fault the store is in: sled reported an I/O error (a full disk, say).
///
/// sled 0.34 keeps the first I/O error of its log as a global error and refuses every
/// later write with it, even once the disk has room again; only a fresh open clears it.
/// So a faulted store refuses work itself (nothing applied to a database that cannot
/// persist it can be acked) until [`Store::reopen`] succeeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFault {
    /// The error as sled reported it.
    pub error: String,
    /// When the fault was first seen, in ms since the Unix epoch.
    pub since_ms: u64,
}

/// A service's sled database: inbox, outbox and the service's own trees.
pub struct Store {
    dir: PathBuf,
    opened: std::sync::RwLock<Arc<Opened>>,
    names: Vec<String>,
    // Set on the first sled I/O error, cleared by a successful reopen.
    fault: std::sync::Mutex<Option<StorageFault>>,
    // How many times the store was reopened after a fault.
    reopens: std::sync::atomic::AtomicU64,
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
    // Set for a partitioned service: which partition an entity is in.
    partition_of: std::sync::OnceLock<PartitionOf>,
    // Woken whenever the relay removed outbox entries.
    outbox_removed: tokio::sync::Notify,
    // Whether the last open found the store closed in order.
    opened_clean: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("trees", &self.names).finish()
    }
}

/// Opens the database `config` describes with the trees `names`.
fn open_db(config: sled::Config, names: &[String]) -> Result<Opened, sled::Error> {
    // Small on purpose: sled's RSS runs at 2–3× this figure, and what the services
    // touch is recent (time-ordered ids put every new key at the right edge of its
    // tree), so a bigger cache buys little and costs memory at 1M stored orders.
    let db = config.cache_capacity(CACHE_BYTES).open()?;
    let trees = names
        .iter()
        .map(|n| db.open_tree(n))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Opened { db, trees })
}

/// Opens the database at `dir`, trying again for a moment while another handle in this
/// process may still hold its lock: sled's background flusher keeps a database it was
/// flushing open briefly after the last handle is dropped, and a handle taken before a
/// reopen (an iteration in flight) may still hold the old one. A store closed and opened
/// again in one process (a service restarted in-process, a reopen after a disk fault)
/// would otherwise fail on a lock that is about to be released.
fn open_db_at(dir: &Path, names: &[String]) -> Result<Opened, sled::Error> {
    let mut attempt = 0;
    loop {
        match open_db(sled::Config::new().path(dir), names) {
            Ok(opened) => return Ok(opened),
            // Any error, not only the lock's: after a disk fault the files may read as
            // half-written for a moment too, and a reopen always tried again on any.
            Err(_) if attempt < REOPEN_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(REOPEN_PAUSE);
            }
            Err(e) => return Err(e),
        }
    }
}

/// How much the space probe writes before a reopen: about what a group commit of a
/// full batch needs, so a disk with only a few bytes free does not count as recovered.
const SPACE_PROBE_BYTES: usize = 1024 * 1024;
const SPACE_PROBE_FILE: &str = "space-probe.tmp";
/// How often, and how far apart, an open tries the database again while an earlier
/// handle in this process may still be closing it ([`open_db_at`]).
const REOPEN_ATTEMPTS: u32 = 40;
const REOPEN_PAUSE: std::time::Duration = std::time::Duration::from_millis(50);

/// The store's reopen count at which a partition's local copy was last made current (taken
/// over, or restored after a reopen), shared by the partition's consumers and its manager.
/// Consumers apply only under its read lock, and only while it matches
/// [`Store::reopens`]; the manager holds its write lock while it restores the partition
/// after a reopen, so nothing is applied half-way through a restore.
#[derive(Debug, Clone)]
pub struct CopyGeneration(Arc<tokio::sync::RwLock<u64>>);

impl CopyGeneration {
    pub fn new(generation: u64) -> CopyGeneration {
        CopyGeneration(Arc::new(tokio::sync::RwLock::new(generation)))
    }

    pub async fn read(&self) -> tokio::sync::RwLockReadGuard<'_, u64> {
        self.0.read().await
    }

    pub async fn write(&self) -> tokio::sync::RwLockWriteGuard<'_, u64> {
        self.0.write().await
    }
}

/// Removes every partition's takeover marker, so each takeover restores.
fn forget_partition_markers(db: &Db) -> Result<(), sled::Error> {
    for key in db.scan_prefix(MARKER_PREFIX).keys() {
        db.remove(key?)?;
    }
    Ok(())
}

/// Writes and syncs [`SPACE_PROBE_BYTES`] in `dir`, then removes them: whether the disk
/// has room again.
fn probe_space(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(SPACE_PROBE_FILE);
    let written = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&vec![0u8; SPACE_PROBE_BYTES])?;
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    written
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
        let mut names = vec![INBOX.to_owned(), OUTBOX.to_owned(), ENTITIES.to_owned()];
        names.extend(tree_names.iter().map(|n| (*n).to_owned()));
        let opened = open_db_at(dir, &names)?;
        let opened_clean = opened.db.remove(CLEAN_KEY)?.is_some();
        if !opened_clean {
            // Commits a crash lost may already be in the changelog and acked: no copy
            // of a partition here may be taken for current ([`Store::durable_by_changelog`]).
            forget_partition_markers(&opened.db)?;
        }
        opened.db.flush()?;
        let ids = (RUNTIME_TREES..names.len()).map(TreeId).collect();
        Ok((
            Store {
                dir: dir.to_owned(),
                opened: std::sync::RwLock::new(Arc::new(opened)),
                names,
                fault: std::sync::Mutex::new(None),
                reopens: std::sync::atomic::AtomicU64::new(0),
                flush_lock: Arc::new(tokio::sync::Mutex::new(())),
                committed: std::sync::atomic::AtomicU64::new(0),
                durable: std::sync::atomic::AtomicU64::new(0),
                commit_gate: std::sync::RwLock::new(()),
                partition_of: std::sync::OnceLock::new(),
                outbox_removed: tokio::sync::Notify::new(),
                opened_clean,
            },
            ids,
        ))
    }

    /// Makes this a partitioned store: transactions that touch entities write v2 outbox
    /// entries naming their partition. Set once, before the first transaction.
    pub fn set_partitioning(&self, partition_of: PartitionOf) {
        let _ = self.partition_of.set(partition_of);
    }

    /// Whether the changelog, not this database, is the durable copy of what the store
    /// commits: true for a partitioned store. Its consumers ack, and its relay publishes,
    /// only once a cut holding the change is stored in JetStream, so a commit need not be
    /// flushed to disk first (Kafka Streams' model). A store that may have lost commits
    /// (opened after a crash, reopened after a storage fault) restores every partition
    /// from the changelog before it works on it again.
    pub fn durable_by_changelog(&self) -> bool {
        self.partition_of.get().is_some()
    }

    /// Makes what was committed as durable as it must be before its effects leave the
    /// service: nothing to do in a store whose changelog is the durable copy, a flush
    /// otherwise.
    pub async fn settle(&self) -> Result<(), RuntimeError> {
        if self.durable_by_changelog() {
            return self.check_fault();
        }
        self.flush().await
    }

    /// Every entity the store keeps bookkeeping for (applied event ids), whether or not
    /// the service still holds data for it.
    pub fn entities_with_meta(&self) -> Vec<String> {
        self.opened().trees[2]
            .iter()
            .keys()
            .filter_map(Result::ok)
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect()
    }

    /// Whether the last open found the store closed in order ([`Store::mark_clean`]).
    pub fn opened_clean(&self) -> bool {
        self.opened_clean
    }

    /// Flushes everything and records an orderly close: the next open may keep the local
    /// copy of every partition this store owned last. Call it last, with nothing left to
    /// commit.
    pub fn mark_clean(&self) -> Result<(), RuntimeError> {
        self.flush_blocking()?;
        let db = self.opened().db.clone();
        db.insert(CLEAN_KEY, &[1u8])
            .and_then(|_| db.flush())
            .map_err(|e| self.storage_error(e))?;
        Ok(())
    }

    /// The partition of `entity`, for a partitioned store.
    pub fn partition_of(&self, entity: &str) -> Option<u32> {
        self.partition_of.get().map(|f| f(entity))
    }

    /// This database's random identity, created on first use: two owners of a partition
    /// tell from it whether the last one was this very store.
    pub fn store_id(&self) -> Result<String, RuntimeError> {
        if let Some(id) = self.opened().db.get(STORE_ID_KEY)? {
            return Ok(String::from_utf8_lossy(&id).into_owned());
        }
        let id = format!("{:016x}", rand::random::<u64>());
        let _ = self.opened().db.compare_and_swap(
            STORE_ID_KEY,
            None as Option<&[u8]>,
            Some(id.as_bytes()),
        )?;
        self.opened().db.flush()?;
        Ok(self
            .opened()
            .db
            .get(STORE_ID_KEY)?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or(id))
    }

    /// The epoch-record sequence at which this store last completed taking `partition`
    /// over (restored it, or found it current); durable.
    pub fn partition_marker(&self, partition: u32) -> Result<Option<u64>, RuntimeError> {
        Ok(self
            .opened()
            .db
            .get(format!("{MARKER_PREFIX}{partition}"))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes))
    }

    /// Records that taking `partition` over completed at epoch-record sequence `seq`.
    pub fn set_partition_marker(&self, partition: u32, seq: u64) -> Result<(), RuntimeError> {
        self.opened()
            .db
            .insert(format!("{MARKER_PREFIX}{partition}"), &seq.to_be_bytes())?;
        self.opened().db.flush()?;
        Ok(())
    }

    /// Reads inside a transaction that writes nothing (a consistent view of several trees).
    pub fn read<T>(&self, work: impl Fn(&Tx<'_>) -> TxResult<T>) -> Result<T, ApplyError> {
        let result = self
            .opened()
            .trees
            .as_slice()
            .transaction(|view| work(&Tx::new(view)));
        match result {
            Ok(value) => Ok(value),
            Err(TransactionError::Abort(abort)) => Err(abort.into()),
            Err(TransactionError::Storage(e)) => Err(ApplyError::Failed(self.storage_error(e))),
        }
    }

    /// Runs `work` in one transaction and reports the outbox entry it wrote, if any.
    pub fn apply_entry<T>(
        &self,
        dedupe_key: Option<&str>,
        work: impl Fn(&Tx<'_>) -> TxResult<T>,
    ) -> Result<(Applied<T>, Option<u64>), ApplyError> {
        self.check_fault()?;
        let stamp = now_ms().to_be_bytes();
        let _gate = self.commit_gate.read().unwrap_or_else(|p| p.into_inner());
        let result = self.opened().trees.as_slice().transaction(|view| {
            if !first_time(&view[0], dedupe_key, &stamp)? {
                return Ok((Applied::Duplicate, None));
            }
            let tx = Tx::new(view);
            tx.begin_item();
            let done = work(&tx)?;
            tx.end_item(dedupe_key);
            let entry = tx.write_outbox(self.partition_of.get())?;
            Ok((Applied::Done(done), entry))
        });
        match result {
            Ok(applied) => {
                self.committed
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(applied)
            }
            Err(TransactionError::Abort(abort)) => Err(abort.into()),
            Err(TransactionError::Storage(e)) => Err(ApplyError::Failed(self.storage_error(e))),
        }
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
        self.apply_entry(dedupe_key, work)
            .map(|(applied, _)| applied)
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
        self.apply_batch_entries(items, dedupe_key, work)
            .into_iter()
            .map(|r| r.map(|(applied, _)| applied))
            .collect()
    }

    /// [`Store::apply_batch`], reporting with each outcome the outbox entry that holds
    /// its messages and changes (shared by the items of one transaction).
    pub fn apply_batch_entries<I, T>(
        &self,
        items: &[I],
        dedupe_key: impl Fn(&I) -> Option<&str>,
        work: impl Fn(&Tx<'_>, &I) -> TxResult<T>,
    ) -> Vec<EntryOutcome<T>> {
        if self.fault().is_some() {
            return items
                .iter()
                .map(|_| Err(ApplyError::Failed(self.faulted_error())))
                .collect();
        }
        if items.len() > 1 {
            let stamp = now_ms().to_be_bytes();
            let _gate = self.commit_gate.read().unwrap_or_else(|p| p.into_inner());
            let result = self.opened().trees.as_slice().transaction(|view| {
                let tx = Tx::new(view);
                let outcomes = apply_items(&tx, &stamp, items, &dedupe_key, &work)?;
                let entry = tx.write_outbox(self.partition_of.get())?;
                Ok((outcomes, entry))
            });
            match result {
                Ok((outcomes, entry)) => {
                    self.committed
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    return outcomes.into_iter().map(|o| Ok((o, entry))).collect();
                }
                // The disk failed: recorded now, before the gate opens, so no cut reads
                // what the failed transaction may have left in memory. Applying the items
                // one by one (the way a refusal is handled) would open the gate first.
                Err(TransactionError::Storage(e @ sled::Error::Io(_))) => {
                    let first = self.storage_error(e);
                    return std::iter::once(Err(ApplyError::Failed(first)))
                        .chain(
                            items
                                .iter()
                                .skip(1)
                                .map(|_| Err(ApplyError::Failed(self.faulted_error()))),
                        )
                        .collect();
                }
                Err(_) => {}
            }
        }
        items
            .iter()
            .map(|item| self.apply_entry(dedupe_key(item), |tx| work(tx, item)))
            .collect()
    }

    /// Applies several batches in **one** transaction, each batch with its own outbox
    /// entry (so each stays within its partition), each item deduplicated by its own key;
    /// returns one list of outcomes per batch, in order.
    ///
    /// Why: besides its cost per key, sled 0.34 pays per transaction — two IO-buffer rolls,
    /// each a write on its IO threads and a wake-up of one (docs/BENCHMARKS.md "Group
    /// commit across partitions"). The consumers of different partitions each pull a few
    /// events at a time; committing what they hold together makes that part of the cost
    /// per group, not per consumer's batch. (With groups of 30+ events the IO threads'
    /// share fell by a fifth, the transactions' own hardly: "Groups gathered before they
    /// commit".)
    ///
    /// If the group is refused (an item aborted, or a conflict sled gave up on), each batch
    /// is applied on its own ([`Store::apply_batch_entries`], which in turn falls back to
    /// item by item), so one bad event still only costs its own outcome.
    pub fn apply_grouped(&self, works: &[Box<dyn BatchWork>]) -> Vec<BatchOutcomes> {
        if works.len() == 1 || self.fault().is_some() {
            return works.iter().map(|w| self.apply_work(w.as_ref())).collect();
        }
        let stamp = now_ms().to_be_bytes();
        let keyed: Vec<Vec<(usize, Option<&str>)>> = works
            .iter()
            .map(|w| (0..w.len()).map(|i| (i, w.key(i))).collect())
            .collect();
        let _gate = self.commit_gate.read().unwrap_or_else(|p| p.into_inner());
        let result = self.opened().trees.as_slice().transaction(|view| {
            let tx = Tx::new(view);
            let mut all = Vec::with_capacity(works.len());
            for (work, items) in works.iter().zip(&keyed) {
                tx.next_entry();
                let outcomes = apply_items(
                    &tx,
                    &stamp,
                    items,
                    &|(_, key): &(usize, Option<&str>)| *key,
                    &|tx: &Tx<'_>, (i, _): &(usize, Option<&str>)| work.apply(tx, *i),
                )?;
                let entry = tx.write_outbox(self.partition_of.get())?;
                all.push((outcomes, entry));
            }
            Ok(all)
        });
        match result {
            Ok(all) => {
                self.committed
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                all.into_iter()
                    .map(|(outcomes, entry)| outcomes.into_iter().map(|o| Ok((o, entry))).collect())
                    .collect()
            }
            // The disk failed: recorded before the gate opens (see `apply_batch_entries`).
            Err(TransactionError::Storage(e @ sled::Error::Io(_))) => {
                let first = self.storage_error(e);
                let mut first = Some(first);
                works
                    .iter()
                    .map(|w| {
                        (0..w.len())
                            .map(|_| {
                                Err(ApplyError::Failed(
                                    first.take().unwrap_or_else(|| self.faulted_error()),
                                ))
                            })
                            .collect()
                    })
                    .collect()
            }
            Err(_) => {
                drop(_gate);
                works.iter().map(|w| self.apply_work(w.as_ref())).collect()
            }
        }
    }

    /// One batch of [`Store::apply_grouped`] on its own.
    fn apply_work(&self, work: &dyn BatchWork) -> BatchOutcomes {
        let items: Vec<(usize, Option<&str>)> = (0..work.len()).map(|i| (i, work.key(i))).collect();
        self.apply_batch_entries(&items, |(_, key)| *key, |tx, (i, _)| work.apply(tx, *i))
    }

    /// Makes every committed transaction durable (the group-commit flush).
    pub async fn flush(&self) -> Result<(), RuntimeError> {
        let wanted = self.committed_now();
        let _guard = self.flush_lock.lock().await;
        // A faulted store has nothing durable to offer, even for work it counted as
        // flushed: its last commits may be lost with the reopen.
        self.check_fault()?;
        // Another flush (the consumer's group commit, say) may already cover everything
        // this caller committed or saw: then there is nothing to wait for.
        if self.durable.load(std::sync::atomic::Ordering::SeqCst) >= wanted {
            return Ok(());
        }
        self.check_fault()?;
        let covered = self.committed_now();
        let db = self.opened().db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await?
            .map_err(|e| self.storage_error(e))?;
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
        self.check_fault()?;
        let covered = self.committed_now();
        self.opened()
            .db
            .flush()
            .map_err(|e| self.storage_error(e))?;
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
    ///
    /// A handle, not a borrow: the store may be reopened after a storage fault, and a
    /// handle taken before that reads the old database.
    pub fn tree(&self, id: TreeId) -> Tree {
        self.opened().trees[id.0].clone()
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
        Ok(self.opened().trees[0].contains_key(key.as_bytes())?)
    }

    /// Forgets processed event ids older than `max_age_ms`; returns how many were removed.
    ///
    /// Safe once the streams no longer hold those events (their max age is 7 days):
    /// nothing can redeliver them any more.
    pub fn prune_inbox(&self, max_age_ms: u64) -> Result<usize, RuntimeError> {
        let cutoff = now_ms().saturating_sub(max_age_ms);
        let mut removed = 0;
        for item in self.opened().trees[0].iter() {
            let (key, stamp) = item?;
            let at = stamp
                .as_ref()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(u64::MAX);
            if at <= cutoff {
                self.opened().trees[0].remove(key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Number of processed event ids remembered.
    pub fn inbox_len(&self) -> usize {
        self.opened().trees[0].len()
    }

    /// The oldest outbox entries, in the order they were written, each with its messages;
    /// whole entries until at least `max` messages (or the outbox's end) are reached.
    #[allow(clippy::type_complexity)]
    pub fn outbox_batch(
        &self,
        max: usize,
    ) -> Result<Vec<(IVec, Vec<OutboxMessage>)>, RuntimeError> {
        Ok(self
            .outbox_entries(max)?
            .into_iter()
            .map(|(key, entry)| (key, entry.messages))
            .collect())
    }

    /// The oldest outbox entries with their partition and entities, whole entries until
    /// at least `max` messages (or the outbox's end) are reached.
    pub fn outbox_entries(&self, max: usize) -> Result<Vec<(IVec, Entry)>, RuntimeError> {
        let mut out = Vec::new();
        let mut messages = 0;
        for item in self.opened().trees[1].iter() {
            if messages >= max {
                break;
            }
            let (key, value) = item?;
            let entry = Entry::decode(&value).ok_or_else(|| RuntimeError::Corrupt {
                record: format!("outbox/{}", u64_key(&key)),
                source: Box::new(MalformedEntry),
            })?;
            messages += entry.messages.len().max(1);
            out.push((key, entry));
        }
        Ok(out)
    }

    /// Removes the outbox entries of `partition` (a partition restored from elsewhere:
    /// what this store had queued for it is superseded).
    pub fn outbox_purge_partition(&self, partition: u32) -> Result<usize, RuntimeError> {
        let mut removed = 0;
        for item in self.opened().trees[1].iter() {
            let (key, value) = item?;
            if Entry::decode(&value).and_then(|e| e.partition) == Some(partition) {
                self.opened().trees[1].remove(key)?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.outbox_removed.notify_waiters();
        }
        Ok(removed)
    }

    /// Runs `work` while no transaction can commit, so that what it reads of the outbox
    /// and of the trees is one consistent cut: the relay reads the entries waiting and
    /// their entities' records together, and every record it reads then reflects exactly
    /// the transactions whose entries it read. Keep `work` short: commits wait.
    pub fn at_a_cut<T>(&self, work: impl FnOnce(&Store) -> T) -> T {
        let _gate = self.commit_gate.write().unwrap_or_else(|p| p.into_inner());
        work(self)
    }

    /// Every outbox entry (see [`Store::outbox_entries`]), for a cut.
    pub fn outbox_all(&self) -> Result<Vec<(IVec, Entry)>, RuntimeError> {
        self.outbox_entries(usize::MAX)
    }

    /// Queues `messages` of `partition` as one outbox entry outside any transaction (a
    /// restored cut's messages, published again by the relay).
    pub fn enqueue(&self, partition: u32, messages: &[OutboxMessage]) -> Result<(), RuntimeError> {
        self.check_fault()?;
        let _gate = self.commit_gate.read().unwrap_or_else(|p| p.into_inner());
        let id = self.opened().db.generate_id()?;
        let encoded: Vec<Vec<u8>> = messages.iter().map(OutboxMessage::encode).collect();
        self.opened().trees[1]
            .insert(id.to_be_bytes(), encode_entry_v2(partition, &[], &encoded))?;
        self.committed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Outbox entries of the `held` partitions, and those without a partition.
    pub fn outbox_len_in(&self, held: &[u32]) -> usize {
        self.opened().trees[1]
            .iter()
            .values()
            .filter_map(Result::ok)
            .filter(
                |value| match Entry::decode(value).and_then(|e| e.partition) {
                    None => true,
                    Some(p) => held.contains(&p),
                },
            )
            .count()
    }

    /// Whether everything this store changed for `entity` is already in the changelog
    /// (its last outbox entry has left the outbox), so a side effect outside the shop
    /// that the change calls for may start: were this instance to die now, the
    /// partition's next owner would restore that change and finish the job. Always true
    /// for a store that is not partitioned.
    pub fn is_stored(&self, entity: &str) -> Result<bool, RuntimeError> {
        self.check_fault()?;
        if self.partition_of.get().is_none() {
            return Ok(true);
        }
        let meta: Option<EntityMeta> = match self.opened().trees[2].get(entity.as_bytes())? {
            Some(bytes) => serde_json::from_slice(&bytes).ok(),
            None => None,
        };
        match meta {
            None => Ok(true),
            Some(meta) if meta.entry == 0 => Ok(true),
            Some(meta) => Ok(!self.outbox_contains(meta.entry)?),
        }
    }

    /// How many outbox entries of `partition` wait.
    pub fn outbox_entries_of(&self, partition: u32) -> Result<usize, RuntimeError> {
        let mut count = 0;
        for item in self.opened().trees[1].iter() {
            let (_, value) = item?;
            if Entry::decode(&value).and_then(|e| e.partition) == Some(partition) {
                count += 1;
            }
        }
        Ok(count)
    }

    /// The partitions that have entries in the outbox.
    pub fn outbox_partitions(&self) -> Result<std::collections::BTreeSet<u32>, RuntimeError> {
        let mut partitions = std::collections::BTreeSet::new();
        for item in self.opened().trees[1].iter() {
            let (_, value) = item?;
            if let Some(partition) = Entry::decode(&value).and_then(|e| e.partition) {
                partitions.insert(partition);
            }
        }
        Ok(partitions)
    }

    /// The newest outbox entry of `partition`, if it has any. The relay removes a
    /// partition's entries a cut at a time, every entry waiting at the cut, so once this
    /// one is gone every older entry of the partition is gone too.
    pub fn newest_entry_of(&self, partition: u32) -> Result<Option<u64>, RuntimeError> {
        for item in self.opened().trees[1].iter().rev() {
            let (key, value) = item?;
            if Entry::decode(&value).and_then(|e| e.partition) == Some(partition) {
                return Ok(key.as_ref().try_into().ok().map(u64::from_be_bytes));
            }
        }
        Ok(None)
    }

    /// Whether the outbox still holds entry `id`.
    pub fn outbox_contains(&self, id: u64) -> Result<bool, RuntimeError> {
        Ok(self.opened().trees[1].contains_key(id.to_be_bytes())?)
    }

    /// Waits until entry `id` has left the outbox (published with its records, or purged),
    /// or `give_up` says to stop waiting; `true` if it left.
    pub async fn wait_outbox_gone(&self, id: u64, give_up: impl Fn() -> bool) -> bool {
        loop {
            let removed = self.outbox_removed.notified();
            tokio::pin!(removed);
            removed.as_mut().enable();
            // While faulted the store may be a stand-in whose outbox is empty, and the
            // relay cannot remove anything: give up, so the consumer naks the batch and
            // waits for the store where it reports the stall (a wait here was silent).
            // The batch is durable; its redelivery is a duplicate, acked once the entry
            // is gone.
            if self.fault().is_some() {
                return false;
            }
            match self.outbox_contains(id) {
                Ok(false) => return true,
                Ok(true) => {}
                Err(_) => return false,
            }
            if give_up() {
                return false;
            }
            // A periodic look covers a wake-up that raced the check above.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(250), removed).await;
        }
    }

    pub fn outbox_remove(&self, key: &[u8]) -> Result<(), RuntimeError> {
        self.check_fault()?;
        self.opened().trees[1]
            .remove(key)
            .map_err(|e| self.storage_error(e))?;
        self.outbox_removed.notify_waiters();
        Ok(())
    }

    /// Removes published entries.
    ///
    /// Plain removes, not a `sled::Batch`: a batch pins sled's log (two IO-buffer
    /// writes, see [`Store::apply_batch`]), and removal needs no atomicity — an entry
    /// left behind by a crash is published again and dropped by JetStream's dedupe.
    pub fn outbox_remove_all(&self, keys: &[IVec]) -> Result<(), RuntimeError> {
        self.check_fault()?;
        let opened = self.opened();
        for key in keys {
            opened.trees[1]
                .remove(key)
                .map_err(|e| self.storage_error(e))?;
        }
        self.outbox_removed.notify_waiters();
        Ok(())
    }

    /// Woken (`notify_waiters`) whenever the relay removed outbox entries: a worker that
    /// waits until a change is stored (`is_stored`) enables a `notified()` before it looks,
    /// and so misses no removal between its look and its wait.
    pub fn outbox_removed(&self) -> &tokio::sync::Notify {
        &self.outbox_removed
    }

    /// Outbox entries waiting: committed transactions whose messages are not all published.
    pub fn outbox_len(&self) -> usize {
        self.opened().trees[1].len()
    }

    /// The database as it is open now.
    fn opened(&self) -> Arc<Opened> {
        self.opened
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The storage fault the store is in, if any.
    pub fn fault(&self) -> Option<StorageFault> {
        self.fault.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many times the store was reopened after a storage fault.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn faulted_error(&self) -> RuntimeError {
        RuntimeError::StorageFaulted(self.fault().map(|f| f.error).unwrap_or_default())
    }

    /// `Err` while the store is faulted: nothing it would do now could be made durable.
    pub fn check_fault(&self) -> Result<(), RuntimeError> {
        match self.fault() {
            None => Ok(()),
            Some(_) => Err(self.faulted_error()),
        }
    }

    /// Wraps a sled error, and records an I/O error as the store's fault: sled refuses
    /// every later write with it until the database is reopened.
    fn storage_error(&self, error: sled::Error) -> RuntimeError {
        if let sled::Error::Io(io) = &error {
            let mut fault = self.fault.lock().unwrap_or_else(|p| p.into_inner());
            if fault.is_none() {
                *fault = Some(StorageFault {
                    error: io.to_string(),
                    since_ms: now_ms(),
                });
            }
        }
        RuntimeError::Storage(error)
    }

    /// Tries to leave a storage fault: checks that the data directory takes a write
    /// again, then closes the database and opens it anew (sled keeps its first I/O error
    /// until then). `Ok(false)`: there was no fault. What had not been flushed before the
    /// fault is gone, as after a crash. In a store that is not partitioned none of it was
    /// acked or published, because acks and the relay wait for a flush; a partitioned
    /// one restores its partitions from the changelog (each takeover marker is
    /// forgotten, and the reopen count changes). Blocking: call it off the async runtime.
    pub fn reopen(&self) -> Result<bool, RuntimeError> {
        if self.fault().is_none() {
            return Ok(false);
        }
        probe_space(&self.dir).map_err(|e| RuntimeError::Storage(sled::Error::Io(e)))?;
        // A stand-in lets the old database close (it holds a lock on its files) while
        // readers still get a database; the fault stays set, so nothing is applied to
        // the stand-in or acked from it.
        let stand_in = open_db(sled::Config::new().temporary(true), &self.names)?;
        let old = std::mem::replace(
            &mut *self.opened.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(stand_in),
        );
        drop(old);
        let fresh = open_db_at(&self.dir, &self.names)?;
        // What was not flushed before the fault is gone, and in a store whose changelog
        // is the durable copy some of it may be stored there and acked: every partition
        // is restored before it is worked on again (the reopen count is the generation
        // the relay, the consumers and the partition manager compare).
        forget_partition_markers(&fresh.db)
            .and_then(|()| fresh.db.flush().map(|_| ()))
            .map_err(RuntimeError::Storage)?;
        {
            let _gate = self.commit_gate.write().unwrap_or_else(|p| p.into_inner());
            *self.opened.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
            let committed = self.committed.load(std::sync::atomic::Ordering::SeqCst);
            self.durable
                .store(committed, std::sync::atomic::Ordering::SeqCst);
            *self.fault.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        self.reopens
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.outbox_removed.notify_waiters();
        Ok(true)
    }

    /// Bytes sled uses on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.opened().db.size_on_disk().unwrap_or(0)
    }
}
