//! The sled store on a real temp dir: the inbox makes work happen once, refusals leave no trace,
//! the outbox keeps messages in order until removed.

use shop_runtime::outbox_entry::{encode_entry, OutboxMessage};
use shop_runtime::store::{
    reject, Applied, ApplyError, BatchWork, EntryOutcome, Store, TreeId, Tx, TxResult,
};
use shop_runtime::RuntimeError;

fn message(n: u8) -> OutboxMessage {
    OutboxMessage {
        subject: format!("events.test.{n}"),
        msg_id: format!("id-{n}"),
        headers: vec![("traceparent".into(), "00-abc".into())],
        payload: vec![n; 3],
    }
}

#[test]
fn work_for_an_event_id_already_in_the_inbox_is_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, trees) = Store::open(dir.path(), &["state"]).expect("open");
    let tree = trees[0];
    let first = store
        .apply(Some("evt-1"), |tx| tx.insert(tree, b"k", b"1"))
        .expect("first");
    assert_eq!(first, Applied::Done(()));
    let second = store
        .apply(Some("evt-1"), |tx| tx.insert(tree, b"k", b"2"))
        .expect("second");
    assert_eq!(second, Applied::Duplicate);
    assert_eq!(
        store.tree(tree).get(b"k").expect("get").as_deref(),
        Some(&b"1"[..])
    );
    assert!(store.inbox_contains("evt-1").expect("inbox"));
}

#[test]
fn a_refused_event_changes_nothing_and_is_not_marked_processed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, trees) = Store::open(dir.path(), &["state"]).expect("open");
    let tree = trees[0];
    let result = store.apply(Some("evt-2"), |tx| {
        tx.insert(tree, b"k", b"changed")?;
        tx.publish(&message(1))?;
        reject::<()>("conflicting order id")
    });
    assert!(
        matches!(result, Err(ApplyError::Rejected(reason)) if reason == "conflicting order id")
    );
    assert!(store.tree(tree).get(b"k").expect("get").is_none());
    assert_eq!(store.outbox_len(), 0);
    assert!(!store.inbox_contains("evt-2").expect("inbox"));
}

#[test]
fn the_outbox_survives_a_reopen_in_write_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (store, _) = Store::open(dir.path(), &[]).expect("open");
        store
            .apply(None, |tx| {
                for n in 0..5 {
                    tx.publish(&message(n))?;
                }
                Ok(())
            })
            .expect("apply");
        store.flush_blocking().expect("flush");
    }
    let (store, _) = Store::open(dir.path(), &[]).expect("reopen");
    let batch = store.outbox_batch(10).expect("batch");
    assert_eq!(batch.len(), 1, "one entry for the transaction");
    let subjects: Vec<_> = batch[0].1.iter().map(|m| m.subject.clone()).collect();
    assert_eq!(
        subjects,
        (0..5)
            .map(|n| format!("events.test.{n}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(batch[0].1[2], message(2));
    store.outbox_remove(&batch[0].0).expect("remove");
    assert_eq!(store.outbox_len(), 0);
}

/// Every message waiting in the outbox, in publish order.
fn outbox_messages(store: &Store) -> Vec<OutboxMessage> {
    store
        .outbox_batch(usize::MAX)
        .expect("outbox")
        .into_iter()
        .flat_map(|(_, messages)| messages)
        .collect()
}

#[test]
fn an_outbox_entry_of_the_older_one_message_form_still_decodes() {
    let m = message(7);
    assert_eq!(
        OutboxMessage::decode_entry(&m.encode()),
        Some(vec![m.clone()])
    );
    let entry = encode_entry(&[message(1).encode(), m.encode()]);
    assert_eq!(
        OutboxMessage::decode_entry(&entry),
        Some(vec![message(1), m])
    );
    assert_eq!(OutboxMessage::decode_entry(&entry[..entry.len() - 1]), None);
}

#[test]
fn inbox_entries_older_than_the_retention_are_pruned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(dir.path(), &[]).expect("open");
    store.apply(Some("old"), |_| Ok(())).expect("apply");
    assert_eq!(
        store.prune_inbox(60_000).expect("prune"),
        0,
        "a fresh entry stays"
    );
    assert_eq!(
        store.prune_inbox(0).expect("prune"),
        1,
        "with zero retention it goes"
    );
    assert!(!store.inbox_contains("old").expect("inbox"));
}

#[test]
fn outbox_messages_round_trip_through_their_binary_form() {
    let m = message(9);
    assert_eq!(OutboxMessage::decode(&m.encode()), Some(m));
    assert_eq!(OutboxMessage::decode(&[0, 0, 0, 9, 1]), None);
}

/// A counter kept in the state tree: each item of a batch adds to what the earlier ones wrote.
fn add(tx: &Tx<'_>, tree: TreeId, by: u8) -> TxResult<u8> {
    let now = tx.get(tree, b"count")?.map(|v| v[0]).unwrap_or(0);
    tx.insert(tree, b"count", &[now + by])?;
    Ok(now + by)
}

#[test]
fn a_batch_applies_its_items_in_order_each_seeing_the_ones_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, trees) = Store::open(dir.path(), &["state"]).expect("open");
    let tree = trees[0];
    // evt-b twice in one batch (a redelivery overtaking its ack): applied once.
    let items = [("evt-a", 1u8), ("evt-b", 2), ("evt-b", 2), ("evt-c", 4)];
    let outcomes = store.apply_batch(
        &items,
        |(id, _)| Some(id),
        |tx, (_, by)| {
            tx.publish(&message(*by))?;
            add(tx, tree, *by)
        },
    );
    let outcomes: Vec<_> = outcomes.into_iter().map(|o| o.expect("applied")).collect();
    assert_eq!(
        outcomes,
        vec![
            Applied::Done(1),
            Applied::Done(3),
            Applied::Duplicate,
            Applied::Done(7)
        ]
    );
    assert_eq!(
        store.tree(tree).get(b"count").expect("get").as_deref(),
        Some(&[7u8][..])
    );
    // One outbox entry for the batch, its messages in the items' order.
    assert_eq!(store.outbox_len(), 1);
    assert_eq!(
        outbox_messages(&store),
        vec![message(1), message(2), message(4)]
    );
    for id in ["evt-a", "evt-b", "evt-c"] {
        assert!(store.inbox_contains(id).expect("inbox"), "{id} recorded");
    }
    // A second delivery of the whole batch changes nothing.
    let again = store.apply_batch(&items, |(id, _)| Some(id), |tx, (_, by)| add(tx, tree, *by));
    assert!(again
        .into_iter()
        .all(|o| o.expect("applied") == Applied::Duplicate));
    assert_eq!(
        store.tree(tree).get(b"count").expect("get").as_deref(),
        Some(&[7u8][..])
    );
}

#[test]
fn a_refused_item_costs_only_its_own_outcome_in_a_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, trees) = Store::open(dir.path(), &["state"]).expect("open");
    let tree = trees[0];
    let items = [("evt-1", 1u8), ("evt-bad", 0), ("evt-3", 4)];
    let outcomes = store.apply_batch(
        &items,
        |(id, _)| Some(id),
        |tx, (_, by)| {
            if *by == 0 {
                tx.publish(&message(0))?;
                return reject("zero is not an amount");
            }
            tx.publish(&message(*by))?;
            add(tx, tree, *by)
        },
    );
    assert!(matches!(outcomes[0], Ok(Applied::Done(1))));
    assert!(matches!(&outcomes[1], Err(ApplyError::Rejected(r)) if r == "zero is not an amount"));
    assert!(matches!(outcomes[2], Ok(Applied::Done(5))));
    assert_eq!(
        store.tree(tree).get(b"count").expect("get").as_deref(),
        Some(&[5u8][..])
    );
    // Only the two applied items left messages; the refused one is not marked processed.
    assert_eq!(outbox_messages(&store), vec![message(1), message(4)]);
    assert!(!store.inbox_contains("evt-bad").expect("inbox"));
    assert!(store.inbox_contains("evt-1").expect("inbox"));
    assert!(store.inbox_contains("evt-3").expect("inbox"));
}

#[test]
fn a_stored_record_that_does_not_decode_is_a_permanent_corrupt_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, trees) = Store::open(dir.path(), &["state"]).expect("open");
    let tree = trees[0];
    store
        .apply(None, |tx| tx.insert(tree, b"order-1", b"not json"))
        .expect("raw write");
    let inside = store.apply(Some("evt-3"), |tx| tx.get_json::<u32>(tree, b"order-1"));
    match inside {
        Err(ApplyError::Failed(e)) => {
            assert!(matches!(e, RuntimeError::Corrupt { .. }), "{e:?}");
            assert!(!e.is_transient());
        }
        other => panic!("expected a corrupt-record failure, got {other:?}"),
    }
    assert!(!store.inbox_contains("evt-3").expect("inbox"));
    let outside = store.read_json::<u32>(tree, b"order-1");
    assert!(
        matches!(&outside, Err(RuntimeError::Corrupt { .. })),
        "{outside:?}"
    );
    assert!(outside.is_err_and(|e| !e.is_transient()));
}

#[test]
fn a_value_that_does_not_encode_is_a_permanent_encode_failure_not_a_corrupt_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, trees) = Store::open(dir.path(), &["state"]).expect("open");
    let tree = trees[0];
    // JSON object keys must be strings; a tuple key never encodes.
    let unencodable = std::collections::HashMap::from([((1u8, 2u8), 3u8)]);
    let result = store.apply(Some("evt-4"), |tx| tx.put_json(tree, b"k", &unencodable));
    match result {
        Err(e @ ApplyError::Failed(RuntimeError::Encode { .. })) => assert!(!e.is_transient()),
        other => panic!("expected an encode failure, got {other:?}"),
    }
    assert!(store.tree(tree).get(b"k").expect("get").is_none());
    assert!(!store.inbox_contains("evt-4").expect("inbox"));
}

#[test]
fn a_refusal_is_never_transient() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(dir.path(), &[]).expect("open");
    let result = store.apply(None, |_| reject::<()>("zero is not an amount"));
    assert!(result.is_err_and(|e| matches!(e, ApplyError::Rejected(_)) && !e.is_transient()));
}

/// A partitioned store does not flush each commit (the changelog is its durable copy), so
/// one that was not closed in order may have lost commits the changelog holds: it keeps no
/// partition's takeover marker, and every takeover restores. An orderly close keeps them,
/// once.
#[test]
fn only_a_store_closed_in_order_keeps_its_takeover_markers() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (store, _) = Store::open(dir.path(), &[]).expect("open");
        store.set_partition_marker(3, 42).expect("marker");
        // Dropped without `mark_clean`: a crash, as far as the next open can tell.
    }
    {
        let (store, _) = Store::open(dir.path(), &[]).expect("reopen");
        assert!(!store.opened_clean());
        assert_eq!(store.partition_marker(3).expect("read"), None);
        store.set_partition_marker(3, 43).expect("marker");
        store.mark_clean().expect("clean");
    }
    {
        let (store, _) = Store::open(dir.path(), &[]).expect("reopen");
        assert!(store.opened_clean());
        assert_eq!(store.partition_marker(3).expect("read"), Some(43));
        // Not closed in order this time.
    }
    let (store, _) = Store::open(dir.path(), &[]).expect("reopen");
    assert!(!store.opened_clean());
    assert_eq!(store.partition_marker(3).expect("read"), None);
}

/// A batch of one partition's entity for [`Store::apply_grouped`]: each item touches the
/// entity, adds to its counter (0 is refused) and publishes a message.
struct Counting {
    entity: &'static str,
    tree: TreeId,
    items: Vec<(&'static str, u8)>,
}

impl BatchWork for Counting {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn key(&self, i: usize) -> Option<&str> {
        Some(self.items[i].0)
    }

    fn apply(&self, tx: &Tx<'_>, i: usize) -> TxResult<()> {
        let by = self.items[i].1;
        tx.touch(self.entity);
        if by == 0 {
            return reject("zero is not an amount");
        }
        tx.publish(&message(by))?;
        let key = self.entity.as_bytes();
        let now = tx.get(self.tree, key)?.map(|v| v[0]).unwrap_or(0);
        tx.insert(self.tree, key, &[now + by])
    }
}

/// A batch of `items` (event id, amount) adding to `entity`'s counter in `tree`.
fn counting(
    entity: &'static str,
    tree: TreeId,
    items: &[(&'static str, u8)],
) -> Box<dyn BatchWork> {
    Box::new(Counting {
        entity,
        tree,
        items: items.to_vec(),
    })
}

fn partitioned_store(dir: &std::path::Path) -> (Store, TreeId) {
    let (store, trees) = Store::open(dir, &["state"]).expect("open");
    // "p1-…" is in partition 1, "p2-…" in partition 2.
    store.set_partitioning(std::sync::Arc::new(|entity: &str| {
        entity[1..2].parse().unwrap_or(0)
    }));
    (store, trees[0])
}

/// Batches of two partitions committed together: one transaction, but an outbox entry per
/// batch, each naming its own partition, and every item deduplicated on its own.
#[test]
fn batches_of_two_partitions_commit_together_each_with_its_own_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, tree) = partitioned_store(dir.path());
    let works = vec![
        counting("p1-order", tree, &[("evt-1", 1), ("evt-2", 2)]),
        // evt-3 twice: a redelivery inside the batch is applied once.
        counting("p2-order", tree, &[("evt-3", 4), ("evt-3", 4)]),
    ];
    let outcomes = store.apply_grouped(&works);
    let done = |o: &EntryOutcome<()>| match o {
        Ok((Applied::Done(()), entry)) => ("done", *entry),
        Ok((Applied::Duplicate, entry)) => ("duplicate", *entry),
        Err(e) => panic!("{e:?}"),
    };
    let first: Vec<_> = outcomes[0].iter().map(done).collect();
    let second: Vec<_> = outcomes[1].iter().map(done).collect();
    assert_eq!(first[0].0, "done");
    assert_eq!(first[1].0, "done");
    assert_eq!(second[0].0, "done");
    assert_eq!(second[1].0, "duplicate");
    // Two entries, one per batch and partition.
    assert!(first[0].1.is_some() && second[0].1.is_some());
    assert_ne!(first[0].1, second[0].1);
    assert_eq!(store.outbox_entries_of(1).expect("entries"), 1);
    assert_eq!(store.outbox_entries_of(2).expect("entries"), 1);
    assert_eq!(
        store.tree(tree).get(b"p1-order").expect("get").as_deref(),
        Some(&[3u8][..])
    );
    assert_eq!(
        store.tree(tree).get(b"p2-order").expect("get").as_deref(),
        Some(&[4u8][..])
    );
    // The same batches again are duplicates through and through.
    let again = store.apply_grouped(&works);
    assert!(again
        .iter()
        .flatten()
        .all(|o| matches!(o, Ok((Applied::Duplicate, _)))));
}

/// A refused item in a group costs only its own outcome: the group falls back to each
/// batch on its own, and the other batch and the refused one's neighbours are applied.
#[test]
fn a_refused_item_in_a_group_costs_only_its_own_outcome() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, tree) = partitioned_store(dir.path());
    let works = vec![
        counting("p1-order", tree, &[("evt-1", 1)]),
        counting(
            "p2-order",
            tree,
            &[("evt-2", 2), ("evt-bad", 0), ("evt-4", 4)],
        ),
    ];
    let outcomes = store.apply_grouped(&works);
    assert!(matches!(outcomes[0][0], Ok((Applied::Done(()), Some(_)))));
    assert!(matches!(outcomes[1][0], Ok((Applied::Done(()), Some(_)))));
    assert!(matches!(&outcomes[1][1], Err(ApplyError::Rejected(_))));
    assert!(matches!(outcomes[1][2], Ok((Applied::Done(()), Some(_)))));
    assert_eq!(
        store.tree(tree).get(b"p2-order").expect("get").as_deref(),
        Some(&[6u8][..])
    );
    assert!(!store.inbox_contains("evt-bad").expect("inbox"));
    assert_eq!(
        outbox_messages(&store),
        vec![message(1), message(2), message(4)]
    );
}
