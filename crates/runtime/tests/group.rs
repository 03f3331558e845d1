//! Partition ownership on a real nats-server: members join, rebalance, leave, die and
//! freeze, and a partition never has two members acting for it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use shop_harness::{connect, eventually, NatsServer};
use shop_runtime::group::{Fence, FenceError, Group, GroupConfig, GroupError, Handovers};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

const BUCKET: &str = "groups";
/// Short leases so expiry tests take seconds; whole seconds is what the server expresses.
const TTL: Duration = Duration::from_secs(2);
/// What a takeover after a lease expiry may take beyond the TTL: the server's expiry
/// timer, the marker reaching the watch, one acquisition; generous for a shared machine.
const TAKEOVER_SLACK: Duration = Duration::from_secs(3);
/// For outcomes that involve no expiry (joins, graceful hand-overs).
const PROMPTLY: Duration = Duration::from_secs(5);

async fn server() -> anyhow::Result<(NatsServer, Context)> {
    let server = NatsServer::start().await?;
    let js = jetstream::new(connect(&server.url()).await?);
    Ok((server, js))
}

fn config(group: &str, instance: &str, partitions: u32) -> GroupConfig {
    GroupConfig::new(BUCKET, group, instance)
        .partitions(partitions)
        .lease_ttl(TTL)
}

fn owned(group: &Group) -> BTreeSet<u32> {
    group.owned().borrow().keys().copied().collect()
}

fn fences(group: &Group) -> BTreeMap<u32, Fence> {
    group.owned().borrow().clone()
}

/// Confirms every hand-over at once, remembering which partitions were asked for.
fn confirm_handovers(mut handovers: Handovers) -> watch::Receiver<BTreeSet<u32>> {
    let (asked_tx, asked) = watch::channel(BTreeSet::new());
    tokio::spawn(async move {
        while let Some(handover) = handovers.next().await {
            asked_tx.send_modify(|asked| {
                asked.insert(handover.partition());
            });
            handover.stopped();
        }
    });
    asked
}

async fn wait_until_owned(
    group: &Group,
    expected: &BTreeSet<u32>,
    within: Duration,
) -> anyhow::Result<()> {
    let what = format!("{} to own {expected:?}", group.instance());
    eventually(within, &what, || async {
        (owned(group) == *expected).then_some(())
    })
    .await?;
    Ok(())
}

async fn wait_until_split(
    a: &Group,
    b: &Group,
    partitions: u32,
    within: Duration,
) -> anyhow::Result<()> {
    eventually(within, "an even split", || async {
        let (mine, theirs) = (owned(a), owned(b));
        let even = mine.len() as u32 == partitions / 2 && theirs.len() as u32 == partitions / 2;
        (even && mine.is_disjoint(&theirs)).then_some(())
    })
    .await?;
    Ok(())
}

fn all(partitions: u32) -> BTreeSet<u32> {
    (0..partitions).collect()
}

#[tokio::test]
async fn a_lone_member_owns_every_partition_under_valid_fences() -> anyhow::Result<()> {
    let (_server, js) = server().await?;
    let (a, _) = Group::join(&js, config("checkout", "a", 32)).await?;
    assert_eq!(a.partitions(), 32);
    wait_until_owned(&a, &all(32), PROMPTLY).await?;
    let fences = fences(&a);
    assert!(fences.values().all(Fence::is_valid));
    let epochs: BTreeSet<u64> = fences.values().map(Fence::epoch).collect();
    assert_eq!(epochs.len(), 32, "every acquisition has its own epoch");
    Ok(())
}

#[tokio::test]
async fn a_second_member_takes_half_and_only_the_moved_partitions_change_owner(
) -> anyhow::Result<()> {
    let (_server, js) = server().await?;
    let (a, handovers) = Group::join(&js, config("checkout", "a", 32)).await?;
    let asked = confirm_handovers(handovers);
    wait_until_owned(&a, &all(32), PROMPTLY).await?;
    let before = fences(&a);

    let (b, _) = Group::join(&js, config("checkout", "b", 32)).await?;
    wait_until_split(&a, &b, 32, PROMPTLY).await?;

    let kept = fences(&a);
    for (partition, fence) in &kept {
        assert_eq!(
            fence.epoch(),
            before[partition].epoch(),
            "partition {partition} stayed with a under the same lease"
        );
    }
    let moved = owned(&b);
    assert_eq!(
        *asked.borrow(),
        moved,
        "a was asked to stop exactly what b took"
    );
    for partition in &moved {
        assert_eq!(
            before[partition].check(),
            Err(FenceError::Revoked {
                partition: *partition,
                epoch: before[partition].epoch()
            })
        );
        assert!(fences(&b)[partition].epoch() > before[partition].epoch());
    }
    Ok(())
}

#[tokio::test]
async fn a_member_that_leaves_hands_everything_over_long_before_its_lease_would_expire(
) -> anyhow::Result<()> {
    let (_server, js) = server().await?;
    // The production TTL: a takeover within `PROMPTLY` cannot have waited for it.
    let ten_seconds = |instance| GroupConfig::new(BUCKET, "payment", instance).partitions(32);
    let (a, a_handovers) = Group::join(&js, ten_seconds("a")).await?;
    let _asked_of_a = confirm_handovers(a_handovers);
    let (b, b_handovers) = Group::join(&js, ten_seconds("b")).await?;
    let asked_of_b = confirm_handovers(b_handovers);
    wait_until_split(&a, &b, 32, PROMPTLY).await?;
    let leaving = fences(&b);

    let started = Instant::now();
    b.leave().await?;
    wait_until_owned(&a, &all(32), PROMPTLY).await?;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    assert_eq!(
        *asked_of_b.borrow(),
        leaving.keys().copied().collect::<BTreeSet<_>>()
    );
    for fence in leaving.values() {
        assert!(matches!(fence.check(), Err(FenceError::Revoked { .. })));
    }
    Ok(())
}

#[tokio::test]
async fn a_killed_members_partitions_are_taken_over_after_the_ttl() -> anyhow::Result<()> {
    let (_server, js) = server().await?;
    // Nobody confirms hand-overs here: dropping the requests lets them go at once.
    let (a, _) = Group::join(&js, config("checkout", "a", 16)).await?;
    let (b, _) = Group::join(&js, config("checkout", "b", 16)).await?;
    wait_until_split(&a, &b, 16, PROMPTLY).await?;
    let orphaned = fences(&b);

    // Dropping the handle stops the member where it stands, like SIGKILL: no release.
    let killed_at = Instant::now();
    drop(b);
    wait_until_owned(&a, &all(16), TTL + TAKEOVER_SLACK).await?;
    let took = killed_at.elapsed();
    // Not before the dead member's fences ran out.
    for (partition, fence) in &orphaned {
        assert!(matches!(fence.check(), Err(FenceError::Expired { .. })));
        assert!(fences(&a)[partition].epoch() > fence.epoch());
    }
    assert!(took <= TTL + TAKEOVER_SLACK, "takeover took {took:?}");
    Ok(())
}

#[tokio::test]
async fn the_recorded_partition_count_wins_over_a_conflicting_config() -> anyhow::Result<()> {
    let (_server, js) = server().await?;
    let (first, _) = Group::join(&js, config("payment", "first", 32)).await?;
    let (second, _) = Group::join(&js, config("payment", "second", 16)).await?;
    assert_eq!(first.partitions(), 32);
    assert_eq!(second.partitions(), 32);
    wait_until_split(&first, &second, 32, PROMPTLY).await?;
    // Another group in the same bucket records its own.
    let (other, _) = Group::join(&js, config("inventory", "x", 1)).await?;
    assert_eq!(other.partitions(), 1);
    Ok(())
}

#[tokio::test]
async fn a_config_that_cannot_work_is_refused_before_joining() -> anyhow::Result<()> {
    let (_server, js) = server().await?;
    let result = Group::join(&js, config("checkout", "host.1", 32)).await;
    assert!(matches!(result, Err(GroupError::Config { .. })));
    Ok(())
}

#[tokio::test]
async fn members_racing_for_one_lease_never_both_hold_it() -> anyhow::Result<()> {
    let (_server, js) = server().await?;
    let names = ["m0", "m1", "m2", "m3", "m4"];
    let joins = names.map(|name| Group::join(&js, config("inventory", name, 1)));
    let mut members = Vec::new();
    for joined in futures::future::join_all(joins).await {
        members.push(joined?.0);
    }
    let kv = js.get_key_value(BUCKET).await?;
    let mut epochs = Vec::new();
    // Kill the active member three times; a standby takes over each time.
    for round in 0..3 {
        let active = eventually(TTL + TAKEOVER_SLACK + TTL, "one active member", || async {
            assert!(
                valid_holders(&members) <= 1,
                "two members hold valid fences on partition 0"
            );
            let holders: Vec<usize> = (0..members.len())
                .filter(|i| members[*i].fence(0).is_some_and(|f| f.is_valid()))
                .collect();
            (holders.len() == 1).then(|| holders[0])
        })
        .await?;
        let fence = members[active]
            .fence(0)
            .ok_or_else(|| anyhow::anyhow!("fence gone"))?;
        // The bucket agrees: its lease names the active member at the fence's epoch.
        let entry = kv
            .entry("inventory.leases.0")
            .await?
            .ok_or_else(|| anyhow::anyhow!("no lease"))?;
        let record: serde_json::Value = serde_json::from_slice(&entry.value)?;
        assert_eq!(record["owner"], members[active].instance(), "round {round}");
        let epoch = record["epoch"].as_u64().unwrap_or(entry.revision);
        assert_eq!(epoch, fence.epoch());
        epochs.push(fence.epoch());
        // Keep polling for overlaps while the old fence runs out and the next owner acquires.
        drop(members.remove(active));
        let watch_until = Instant::now() + TTL;
        while Instant::now() < watch_until {
            let holders = valid_holders(&members) + usize::from(fence.is_valid());
            assert!(
                holders <= 1,
                "round {round}: {holders} valid fences at once"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        epochs.windows(2).all(|w| w[0] < w[1]),
        "epochs grow: {epochs:?}"
    );
    Ok(())
}

fn valid_holders(members: &[Group]) -> usize {
    members
        .iter()
        .filter(|m| m.fence(0).is_some_and(|f| f.is_valid()))
        .count()
}

/// A member on a runtime and thread of its own, so the test can freeze it entirely
/// (its renewals, its watch, its NATS connection) the way a stopped process freezes.
struct Isolated {
    owned: watch::Receiver<BTreeMap<u32, Fence>>,
    control: mpsc::UnboundedSender<Control>,
}

enum Control {
    /// Block the member's only thread until the gate opens (its sender is used or dropped).
    Freeze(std::sync::mpsc::Receiver<()>),
    Leave(oneshot::Sender<Result<(), GroupError>>),
}

impl Isolated {
    async fn join(url: String, config: GroupConfig) -> anyhow::Result<Isolated> {
        let (ready_tx, ready) = oneshot::channel();
        let (control, mut commands) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::Error::from(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                let joined = async {
                    let js = jetstream::new(connect(&url).await?);
                    Ok::<_, anyhow::Error>(Group::join(&js, config).await?)
                }
                .await;
                let group = match joined {
                    Ok((group, _handovers)) => {
                        let _ = ready_tx.send(Ok(group.owned()));
                        group
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Some(command) = commands.recv().await {
                    match command {
                        // Blocking the runtime's only thread is the point: nothing of
                        // this member runs until the gate opens.
                        Control::Freeze(gate) => {
                            let _ = gate.recv();
                        }
                        Control::Leave(done) => {
                            let _ = done.send(group.leave().await);
                            return;
                        }
                    }
                }
            });
        });
        let owned = ready.await??;
        Ok(Isolated { owned, control })
    }

    fn freeze(&self) -> anyhow::Result<std::sync::mpsc::Sender<()>> {
        let (thaw, gate) = std::sync::mpsc::channel();
        self.control
            .send(Control::Freeze(gate))
            .map_err(|_| anyhow::anyhow!("member thread is gone"))?;
        Ok(thaw)
    }

    fn owned(&self) -> BTreeMap<u32, Fence> {
        self.owned.borrow().clone()
    }

    async fn leave(self) -> anyhow::Result<()> {
        let (done, left) = oneshot::channel();
        self.control
            .send(Control::Leave(done))
            .map_err(|_| anyhow::anyhow!("member thread is gone"))?;
        Ok(left.await??)
    }
}

#[tokio::test]
async fn a_frozen_member_loses_its_leases_and_its_fences_fail_without_a_round_trip(
) -> anyhow::Result<()> {
    let (server, js) = server().await?;
    let (a, a_handovers) = Group::join(&js, config("checkout", "a", 16)).await?;
    let _asked = confirm_handovers(a_handovers);
    let b = Isolated::join(server.url(), config("checkout", "b", 16)).await?;
    eventually(PROMPTLY, "an even split", || async {
        (owned(&a).len() == 8 && b.owned().len() == 8).then_some(())
    })
    .await?;
    let frozen_fences = b.owned();

    let thaw = b.freeze()?;
    let frozen_at = Instant::now();
    wait_until_owned(&a, &all(16), TTL + TAKEOVER_SLACK).await?;
    let took = frozen_at.elapsed();
    assert!(
        took >= TTL - Duration::from_millis(500),
        "taken over after only {took:?}"
    );
    // b's thread is blocked: these checks are pure local time, and they already fail.
    for (partition, fence) in &frozen_fences {
        assert_eq!(
            fence.check(),
            Err(FenceError::Expired {
                partition: *partition,
                epoch: fence.epoch()
            })
        );
        assert!(fences(&a)[partition].epoch() > fence.epoch());
    }

    // b wakes up: its old fences never pass again, and the group rebalances.
    thaw.send(())?;
    eventually(PROMPTLY + TTL, "b to rejoin with fresh leases", || async {
        let now = b.owned();
        (now.len() == 8 && owned(&a).len() == 8).then_some(())
    })
    .await?;
    for (partition, fence) in &frozen_fences {
        assert!(!fence.is_valid(), "old fence on {partition} passes again");
        if let Some(fresh) = b.owned().get(partition) {
            assert!(fresh.epoch() > fence.epoch());
        }
    }
    b.leave().await?;
    wait_until_owned(&a, &all(16), PROMPTLY).await?;
    Ok(())
}
