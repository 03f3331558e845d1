//! Group commit across consumers: the batches that the service's consumers (one per
//! partition and stream) hand in while a transaction runs are applied together in the
//! next one ([`Store::apply_grouped`]).
//!
//! Why a task of its own: the consumers' applies were synchronous on the runtime's
//! worker threads, so at most as many batches as there are workers could ever meet. Here
//! a consumer hands its batch over and awaits the outcome; while one group commits, the
//! others keep pulling and decoding, and everything they hand in meanwhile is the next
//! group. A consumer still awaits its batch before it applies the next one, so each
//! partition's events are applied in stream order, as before.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::stats::Stats;
use crate::store::{BatchOutcomes, BatchWork, Store};

/// Most items one group commits: a bound on how long one transaction holds the commit
/// gate (the relay's cut waits for it).
const GROUP_ITEMS: usize = 1024;

struct Submission {
    work: Box<dyn BatchWork>,
    reply: oneshot::Sender<BatchOutcomes>,
}

/// The handle consumers submit their batches to; cheap to clone. The task behind it ends
/// once every handle is dropped.
#[derive(Clone)]
pub struct Committer {
    submit: mpsc::UnboundedSender<Submission>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl Committer {
    /// Starts the committing task for `store` (on the current tokio runtime); each group
    /// it commits counts once in STATS' `group_commits`, so `events_processed ÷
    /// group_commits` is the events per sled transaction of the consumers.
    pub fn start(store: Arc<Store>, stats: Arc<Stats>) -> Committer {
        let (submit, receive) = mpsc::unbounded_channel();
        tokio::spawn(run(store, stats, receive));
        Committer { submit }
    }

    /// Applies `work` in the next group; returns one outcome per item, or `None` if the
    /// committing task is gone (the runtime is shutting down) and the batch was not
    /// applied.
    pub async fn apply(&self, work: Box<dyn BatchWork>) -> Option<BatchOutcomes> {
        let (reply, answer) = oneshot::channel();
        self.submit.send(Submission { work, reply }).ok()?;
        answer.await.ok()
    }
}

/// How many times the committer lets the runtime run other ready tasks before it closes
/// a group. A consumer whose pull was just answered is one of them: given its turn, it
/// decodes and hands in its batch, and the group is larger. With nothing else ready a
/// yield returns at once, so at low load this costs no latency (a timed linger would).
const GATHER_YIELDS: usize = 3;

async fn run(
    store: Arc<Store>,
    stats: Arc<Stats>,
    mut receive: mpsc::UnboundedReceiver<Submission>,
) {
    while let Some(first) = receive.recv().await {
        let mut items = first.work.len();
        let mut group = vec![first];
        for round in 0..=GATHER_YIELDS {
            while items < GROUP_ITEMS {
                match receive.try_recv() {
                    Ok(next) => {
                        items += next.work.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            if round == GATHER_YIELDS || items >= GROUP_ITEMS {
                break;
            }
            tokio::task::yield_now().await;
        }
        let (works, replies): (Vec<_>, Vec<_>) =
            group.into_iter().map(|s| (s.work, s.reply)).unzip();
        // The transaction runs on a blocking thread: on a worker it took one of the
        // runtime's two threads for its whole length, and the consumers that would have
        // filled the next group waited for it.
        let store = store.clone();
        let outcomes = match tokio::task::spawn_blocking(move || store.apply_grouped(&works)).await
        {
            Ok(outcomes) => outcomes,
            // A panic in the transaction ends the committer as it did on a worker;
            // the consumers then see it gone.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => return,
        };
        stats.add_group_commit();
        for (reply, outcomes) in replies.into_iter().zip(outcomes) {
            let _ = reply.send(outcomes);
        }
    }
}
