//! The changelog on a real nats-server: what a new owner restores after the last owner
//! stopped half-way through a write, and which late writes the fence refuses.

use std::time::Duration;

use async_nats::jetstream::{self, Context};
use shop_harness::{connect, eventually, NatsServer};
use shop_runtime::changelog::{EpochRecord, ReadyPartition, Record, StateBucket, LOG_SLOTS};
use shop_runtime::group::{Fence, Group, GroupConfig};
use shop_runtime::outbox_entry::OutboxMessage;
use shop_runtime::RuntimeError;

const PARTITION: u32 = 0;

async fn server() -> anyhow::Result<(NatsServer, Context, StateBucket)> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(connect(&server.url()).await?);
    let bucket = StateBucket::open(&js, "state_test", 1).await?;
    Ok((server, js, bucket))
}

/// A real lease on the one partition of a one-member group.
async fn lease(js: &Context) -> anyhow::Result<(Group, Fence)> {
    let config = GroupConfig::new("groups", "svc", "a")
        .partitions(1)
        .lease_ttl(Duration::from_secs(30));
    let (group, _handovers) = Group::join(js, config).await?;
    let owned = group.owned();
    let fence = eventually(Duration::from_secs(10), "the lease on partition 0", || {
        let fence = owned.borrow().get(&PARTITION).cloned();
        async move { fence }
    })
    .await?;
    Ok((group, fence))
}

/// Takes the partition the way a new owner does: its own epoch record.
async fn take(
    bucket: &StateBucket,
    fence: &Fence,
    store_id: &str,
) -> anyhow::Result<ReadyPartition> {
    let owner = EpochRecord::new(store_id, "a", fence.epoch());
    let sequence = bucket.write_epoch(PARTITION, &owner).await?;
    Ok(ReadyPartition::new(fence.clone(), owner, sequence))
}

fn record(state: &str) -> Record {
    Record {
        v: 1,
        data: Some(serde_json::json!({ "state": state })),
        applied: vec![format!("event-{state}")],
        at: None,
    }
}

/// One event as the outbox codes it.
fn message(id: &str) -> Vec<u8> {
    OutboxMessage {
        subject: format!("events.test.{id}"),
        msg_id: id.to_owned(),
        headers: Vec::new(),
        payload: id.as_bytes().to_vec(),
    }
    .encode()
}

fn state_of(record: Option<&Record>) -> Option<String> {
    record
        .and_then(|r| r.data.as_ref())
        .and_then(|d| d["state"].as_str())
        .map(str::to_owned)
}

/// A relay stored a cut, could not publish it (its PubAcks timed out), and died while
/// storing the next cut. The first cut is still what a new owner restores, with its
/// messages, not the entity's older record under it.
#[tokio::test]
async fn a_cut_cut_short_by_its_successor_still_restores_whole() -> anyhow::Result<()> {
    let (_server, js, bucket) = server().await?;
    let (_group, fence) = lease(&js).await?;
    let held = take(&bucket, &fence, "store-a").await?;
    let order = "order-1".to_owned();

    // The entity's own record, then a newer cut of it.
    bucket
        .publish_records(PARTITION, &held, &[(order.clone(), record("due"))])
        .await?;
    bucket
        .store_cut(
            PARTITION,
            &held,
            &[(order.clone(), record("captured"))],
            &[message("captured")],
        )
        .await?;
    // The next cut's chunks are stored; its owner dies before the record naming them.
    bucket
        .write_cut_chunks(
            PARTITION,
            &held,
            &[(order.clone(), record("refunding"))],
            &[message("refund")],
        )
        .await?;

    let restored = bucket.read_partition(PARTITION, 0).await?;
    assert_eq!(
        state_of(restored.records.get(&order)).as_deref(),
        Some("captured")
    );
    let ids: Vec<&str> = restored
        .messages
        .iter()
        .map(|m| m.msg_id.as_str())
        .collect();
    assert_eq!(ids, ["captured"]);
    // Its latest version is in the cut only: the next owner must publish it, since its
    // own first cut replaces this one.
    assert_eq!(restored.only_in_cut, std::slice::from_ref(&order));

    bucket
        .publish_records(PARTITION, &held, &[(order.clone(), record("captured"))])
        .await?;
    assert!(bucket
        .read_partition(PARTITION, 0)
        .await?
        .only_in_cut
        .is_empty());

    // Two more cuts: the slots keep taking turns, and each restores whole.
    for state in ["refunding", "refunded"] {
        bucket
            .store_cut(PARTITION, &held, &[(order.clone(), record(state))], &[])
            .await?;
        let restored = bucket.read_partition(PARTITION, 0).await?;
        assert_eq!(
            state_of(restored.records.get(&order)).as_deref(),
            Some(state)
        );
    }
    Ok(())
}

/// A new owner that learns the named slot from the bucket (not from its own writes)
/// writes its first cut beside the named one, not over it.
#[tokio::test]
async fn a_new_owner_writes_its_first_cut_beside_the_last_owners() -> anyhow::Result<()> {
    let (_server, js, bucket) = server().await?;
    let (_group, fence) = lease(&js).await?;
    let order = "order-2".to_owned();
    let first = take(&bucket, &fence, "store-a").await?;
    bucket
        .store_cut(
            PARTITION,
            &first,
            &[(order.clone(), record("captured"))],
            &[],
        )
        .await?;

    let second = take(&bucket, &fence, "store-b").await?;
    bucket
        .write_cut_chunks(PARTITION, &second, &[(order.clone(), record("other"))], &[])
        .await?;
    let restored = bucket.read_partition(PARTITION, 0).await?;
    assert_eq!(
        state_of(restored.records.get(&order)).as_deref(),
        Some("captured")
    );
    Ok(())
}

/// A restarted instance adopts its own lease, so its epoch is the old run's. Its epoch
/// record must still fence out what the killed run had in flight: a record written
/// under the old run's sequence is refused once the new run has taken the partition.
#[tokio::test]
async fn a_new_run_of_the_same_store_fences_out_the_old_runs_writes() -> anyhow::Result<()> {
    let (_server, js, bucket) = server().await?;
    let (_group, fence) = lease(&js).await?;
    let old_run = take(&bucket, &fence, "store-a").await?;
    let new_run = take(&bucket, &fence, "store-a").await?;
    assert_ne!(old_run.epoch_seq(), new_run.epoch_seq());

    let late = bucket
        .publish_records(
            PARTITION,
            &old_run,
            &[("order-3".to_owned(), record("due"))],
        )
        .await;
    assert!(
        matches!(
            late,
            Err(RuntimeError::EpochMismatch {
                partition: PARTITION
            })
        ),
        "the old run's write was not refused: {late:?}"
    );
    bucket
        .publish_records(
            PARTITION,
            &new_run,
            &[("order-3".to_owned(), record("captured"))],
        )
        .await?;
    let restored = bucket.read_partition(PARTITION, 0).await?;
    assert_eq!(
        state_of(restored.records.get("order-3")).as_deref(),
        Some("captured")
    );
    Ok(())
}

/// Renewing the epoch (after a write of unknown outcome) fences out writes made under
/// the sequence before it, keeps the owner writing, and is itself refused once another
/// owner took the partition.
#[tokio::test]
async fn a_renewed_epoch_refuses_older_writes_and_never_fences_out_a_new_owner(
) -> anyhow::Result<()> {
    let (_server, js, bucket) = server().await?;
    let (_group, fence) = lease(&js).await?;
    let held = take(&bucket, &fence, "store-a").await?;
    let before = ReadyPartition::new(fence.clone(), held.owner.clone(), held.epoch_seq());

    bucket.renew_epoch(PARTITION, &held).await?;
    assert!(held.epoch_seq() > before.epoch_seq());
    let stale = bucket
        .publish_records(PARTITION, &before, &[("order-4".to_owned(), record("due"))])
        .await;
    assert!(matches!(stale, Err(RuntimeError::EpochMismatch { .. })));
    bucket
        .publish_records(
            PARTITION,
            &held,
            &[("order-4".to_owned(), record("captured"))],
        )
        .await?;

    // Another store takes the partition; the old owner's renewal must not undo that.
    let next = take(&bucket, &fence, "store-b").await?;
    let renewal = bucket.renew_epoch(PARTITION, &held).await;
    assert!(matches!(renewal, Err(RuntimeError::EpochMismatch { .. })));
    let (_, last) = bucket
        .last_epoch_at(PARTITION)
        .await?
        .expect("an epoch record");
    assert!(last.same_owner(&next.owner));
    assert_eq!(last.store_id, "store-b");
    Ok(())
}

/// A cut that fits in one chunk is stored in its cut record; a bigger one in chunks. Each
/// form restores whole, with its messages, after the other.
#[tokio::test]
async fn cuts_in_their_record_and_cuts_in_chunks_restore_alike() -> anyhow::Result<()> {
    let (_server, js, bucket) = server().await?;
    let (_group, fence) = lease(&js).await?;
    let held = take(&bucket, &fence, "store-a").await?;
    // About 1.2 MiB of records: more than one chunk (512 KiB) holds.
    let big = |state: &str, n: usize| {
        (0..n)
            .map(|i| {
                let mut r = record(state);
                r.data = Some(serde_json::json!({ "state": state, "pad": "x".repeat(300 * 1024) }));
                (format!("order-big-{i}"), r)
            })
            .collect::<Vec<_>>()
    };
    for (records, message_id) in [
        (vec![("order-5".to_owned(), record("due"))], "small-1"),
        (big("chunked", 4), "big-1"),
        (vec![("order-5".to_owned(), record("captured"))], "small-2"),
        (big("chunked-again", 4), "big-2"),
    ] {
        bucket
            .store_cut(PARTITION, &held, &records, &[message(message_id)])
            .await?;
        let restored = bucket.read_partition(PARTITION, 0).await?;
        for (entity, record) in &records {
            assert_eq!(restored.records.get(entity), Some(record), "{entity}");
        }
        let ids: Vec<&str> = restored
            .messages
            .iter()
            .map(|m| m.msg_id.as_str())
            .collect();
        assert_eq!(ids, [message_id]);
    }
    Ok(())
}

/// Several fenced writes at once (a solo stream lets them be in flight together) are
/// refused together when another owner's epoch record came between, and none lands.
#[tokio::test]
async fn fenced_writes_in_flight_together_are_all_refused_after_a_takeover() -> anyhow::Result<()> {
    let (_server, js, bucket) = server().await?;
    let (_group, fence) = lease(&js).await?;
    let old = take(&bucket, &fence, "store-a").await?;
    let _new = take(&bucket, &fence, "store-b").await?;
    let writes: Vec<(String, Record)> = (0..8)
        .map(|i| (format!("order-late-{i}"), record("late")))
        .collect();
    let refused = bucket.publish_records(PARTITION, &old, &writes).await;
    assert!(
        matches!(
            refused,
            Err(RuntimeError::EpochMismatch {
                partition: PARTITION
            })
        ),
        "{refused:?}"
    );
    let restored = bucket.read_partition(PARTITION, 0).await?;
    assert!(writes
        .iter()
        .all(|(e, _)| !restored.records.contains_key(e)));
    Ok(())
}

/// How many writes the bucket's stream has taken so far.
async fn writes(js: &Context) -> anyhow::Result<u64> {
    let mut stream = js.get_stream("KV_state_test").await?;
    Ok(stream.info().await?.state.last_sequence)
}

/// A commit costs one write on the ack path: its cut. The entity's own record follows in
/// compaction, once for all the cuts that changed it; until then a read of the entity
/// finds its newest version in the log.
#[tokio::test]
async fn each_cut_is_one_write_and_compaction_writes_each_entity_once() -> anyhow::Result<()> {
    let (_server, js, bucket) = server().await?;
    let (_group, fence) = lease(&js).await?;
    let held = take(&bucket, &fence, "store-a").await?;
    let order = "order-6".to_owned();
    // The first cut also reads the (empty) log once, which writes nothing.
    let before = writes(&js).await?;
    for state in ["placed", "reserved", "captured"] {
        bucket
            .store_cut(
                PARTITION,
                &held,
                &[(order.clone(), record(state))],
                &[message(state)],
            )
            .await?;
    }
    assert_eq!(writes(&js).await? - before, 3, "one write per cut");
    assert_eq!(
        state_of(bucket.record(&order, PARTITION).await?.as_ref()).as_deref(),
        Some("captured"),
        "a read finds the newest version in the log"
    );

    let before = writes(&js).await?;
    bucket.compact(PARTITION, &held).await?;
    assert_eq!(
        writes(&js).await? - before,
        2,
        "one record for three cuts, and the compaction mark"
    );
    let kv = js.get_key_value("state_test").await?;
    let own: Record = serde_json::from_slice(
        &kv.get(format!("{PARTITION}.{order}"))
            .await?
            .expect("the order's own record"),
    )?;
    assert_eq!(state_of(Some(&own)).as_deref(), Some("captured"));
    assert!(own.at.is_some(), "a compacted record names its cut");
    // Nothing new: nothing to write.
    let before = writes(&js).await?;
    bucket.compact(PARTITION, &held).await?;
    assert_eq!(writes(&js).await?, before);

    // A cut above the compaction mark is newer than the key; reads of it (an API's, one
    // per request) leave no consumer behind.
    bucket
        .store_cut(
            PARTITION,
            &held,
            &[(order.clone(), record("refunded"))],
            &[],
        )
        .await?;
    for _ in 0..50 {
        assert_eq!(
            state_of(bucket.record(&order, PARTITION).await?.as_ref()).as_deref(),
            Some("refunded")
        );
    }
    let mut stream = js.get_stream("KV_state_test").await?;
    assert_eq!(stream.info().await?.state.consumer_count, 0);
    Ok(())
}

/// More cuts than the log has slots, and no compaction asked for: the log is compacted
/// before a slot is written again, so every entity restores at its newest version.
#[tokio::test]
async fn a_full_log_is_compacted_before_a_slot_is_written_again() -> anyhow::Result<()> {
    let (_server, js, bucket) = server().await?;
    let (_group, fence) = lease(&js).await?;
    let held = take(&bucket, &fence, "store-a").await?;
    let cuts = LOG_SLOTS + 5;
    for n in 0..cuts {
        bucket
            .store_cut(
                PARTITION,
                &held,
                &[(format!("order-ring-{n}"), record(&format!("state-{n}")))],
                &[message(&format!("m-{n}"))],
            )
            .await?;
    }
    let restored = bucket.read_partition(PARTITION, 0).await?;
    for n in 0..cuts {
        let entity = format!("order-ring-{n}");
        assert_eq!(
            state_of(restored.records.get(&entity)),
            Some(format!("state-{n}")),
            "{entity}"
        );
    }
    let ids: Vec<&str> = restored
        .messages
        .iter()
        .map(|m| m.msg_id.as_str())
        .collect();
    assert_eq!(
        ids,
        [format!("m-{}", cuts - 1)],
        "the newest cut's messages"
    );
    Ok(())
}

/// A store that takes its partition back without a restore (it owned it last: a restart)
/// does not know which cuts in the log are compacted. It compacts the ones above the mark
/// before it writes a slot again, so versions only the log held are not lost.
#[tokio::test]
async fn a_store_taking_its_partition_back_compacts_the_log_before_reusing_it() -> anyhow::Result<()>
{
    let (_server, js, bucket) = server().await?;
    let (_group, fence) = lease(&js).await?;
    let first_run = take(&bucket, &fence, "store-a").await?;
    for n in 0..5 {
        bucket
            .store_cut(
                PARTITION,
                &first_run,
                &[(format!("order-early-{n}"), record("captured"))],
                &[],
            )
            .await?;
    }
    // Killed before any compaction; the next run fills the whole log.
    let second_run = take(&bucket, &fence, "store-a").await?;
    for n in 0..LOG_SLOTS {
        bucket
            .store_cut(
                PARTITION,
                &second_run,
                &[(format!("order-late-{n}"), record("placed"))],
                &[],
            )
            .await?;
    }
    let restored = bucket.read_partition(PARTITION, 0).await?;
    for n in 0..5 {
        assert_eq!(
            state_of(restored.records.get(&format!("order-early-{n}"))).as_deref(),
            Some("captured")
        );
    }
    assert_eq!(restored.records.len(), 5 + LOG_SLOTS as usize);
    Ok(())
}

/// A new owner writes what only the log held on its keys, with a compaction mark over
/// the log, before it writes its own cuts into the same slots.
#[tokio::test]
async fn a_new_owner_settles_the_log_before_writing_into_it() -> anyhow::Result<()> {
    let (_server, js, bucket) = server().await?;
    let (_group, fence) = lease(&js).await?;
    let first = take(&bucket, &fence, "store-a").await?;
    let order = "order-7".to_owned();
    for state in ["placed", "captured"] {
        bucket
            .store_cut(PARTITION, &first, &[(order.clone(), record(state))], &[])
            .await?;
    }
    let second = take(&bucket, &fence, "store-b").await?;
    let restored = bucket.read_partition(PARTITION, 0).await?;
    assert_eq!(restored.only_in_cut, std::slice::from_ref(&order));
    assert_eq!(
        bucket.settle_restore(PARTITION, &second, &restored).await?,
        1
    );
    // The new owner's cuts overwrite the first owner's slots.
    for n in 0..LOG_SLOTS {
        bucket
            .store_cut(
                PARTITION,
                &second,
                &[(format!("order-other-{n}"), record("placed"))],
                &[],
            )
            .await?;
    }
    let restored = bucket.read_partition(PARTITION, 0).await?;
    assert_eq!(
        state_of(restored.records.get(&order)).as_deref(),
        Some("captured")
    );
    // A later run of the second store that takes the partition back without a restore
    // reads the mark, not the first owner's older cuts.
    let third = take(&bucket, &fence, "store-b").await?;
    bucket
        .store_cut(
            PARTITION,
            &third,
            &[("order-8".to_owned(), record("placed"))],
            &[],
        )
        .await?;
    bucket.compact(PARTITION, &third).await?;
    assert_eq!(
        state_of(bucket.record(&order, PARTITION).await?.as_ref()).as_deref(),
        Some("captured")
    );
    Ok(())
}

/// A restore counts only if its read reached the reader's own epoch record: a read that
/// stops before it (a replica behind its leader serves it) may lack the last owner's
/// final cuts, and is refused rather than restored from.
#[tokio::test]
async fn a_restore_read_that_does_not_reach_the_readers_epoch_record_is_refused(
) -> anyhow::Result<()> {
    let (_server, js, bucket) = server().await?;
    let (_group, fence) = lease(&js).await?;
    let held = take(&bucket, &fence, "store-a").await?;
    let order = "order-1".to_owned();
    bucket
        .store_cut(
            PARTITION,
            &held,
            &[(order.clone(), record("captured"))],
            &[],
        )
        .await?;

    // Reaching it: the cut written after it is there.
    let restored = bucket.read_partition(PARTITION, held.epoch_seq()).await?;
    assert_eq!(
        state_of(restored.records.get(&order)).as_deref(),
        Some("captured")
    );

    // An epoch record the server has not got to (as a lagging replica would read it).
    let ahead = held.epoch_seq() + 1_000;
    match bucket.read_partition(PARTITION, ahead).await {
        Err(RuntimeError::StaleRead {
            partition,
            read,
            expected,
        }) => {
            assert_eq!(
                (partition, read, expected),
                (PARTITION, held.epoch_seq(), ahead)
            );
        }
        other => panic!("expected a stale read, got {other:?}"),
    }
    Ok(())
}
