//! Who should own which partition: a pure function every member evaluates on the same
//! facts (the members and the current lease holders), so all agree without talking.
//!
//! Balanced: each of N members gets ⌊P/N⌋ or ⌈P/N⌉ partitions. Sticky: a current owner
//! that is still a member keeps what it holds up to its quota. Minimal: the larger
//! quotas go to the members holding the most, so the number of partitions that change
//! hands is the least any balanced assignment allows.

use std::collections::{BTreeMap, BTreeSet};

/// The target owner of every partition in `0..partitions`.
///
/// `current` maps partitions to whoever holds their lease now; holders that are not in
/// `members` (gone, or leaving) and partitions out of range are ignored. With no
/// members, nobody owns anything.
pub fn assign(
    partitions: u32,
    members: &BTreeSet<String>,
    current: &BTreeMap<u32, String>,
) -> BTreeMap<u32, String> {
    let mut target = BTreeMap::new();
    let quotas = quotas(partitions, members, current);
    if quotas.is_empty() {
        return target;
    }
    let mut load: BTreeMap<&str, u32> = quotas.keys().map(|m| (*m, 0)).collect();
    // Keep first: a partition that stays put needs no handover.
    for (&partition, owner) in current.range(..partitions) {
        let owner = owner.as_str();
        if let (Some(quota), Some(count)) = (quotas.get(owner), load.get_mut(owner)) {
            if *count < *quota {
                *count += 1;
                target.insert(partition, owner.to_owned());
            }
        }
    }
    // Then fill: free partitions in order, to members with room, in name order.
    let mut open = quotas.iter().filter_map(|(member, quota)| {
        let room = quota.saturating_sub(load.get(member).copied().unwrap_or(0));
        (room > 0).then_some((*member, room))
    });
    let mut slot = open.next();
    for partition in 0..partitions {
        if target.contains_key(&partition) {
            continue;
        }
        let Some((member, room)) = slot.as_mut() else {
            break;
        };
        target.insert(partition, (*member).to_owned());
        *room -= 1;
        if *room == 0 {
            slot = open.next();
        }
    }
    target
}

/// Each member's share: ⌊P/N⌋, plus one for the `P mod N` members holding the most now
/// (ties broken by name, so every member computes the same quotas).
fn quotas<'a>(
    partitions: u32,
    members: &'a BTreeSet<String>,
    current: &BTreeMap<u32, String>,
) -> BTreeMap<&'a str, u32> {
    let Ok(n) = u32::try_from(members.len()) else {
        return BTreeMap::new();
    };
    if n == 0 {
        return BTreeMap::new();
    }
    let mut held: BTreeMap<&str, u32> = members.iter().map(|m| (m.as_str(), 0)).collect();
    for owner in current.range(..partitions).map(|(_, owner)| owner) {
        if let Some(count) = held.get_mut(owner.as_str()) {
            *count += 1;
        }
    }
    let mut by_holdings: Vec<(&str, u32)> = held.into_iter().collect();
    by_holdings.sort_by(|(a, held_a), (b, held_b)| held_b.cmp(held_a).then(a.cmp(b)));
    let (base, extra) = (partitions / n, partitions % n);
    by_holdings
        .into_iter()
        .zip(0u32..)
        .map(|((member, _), rank)| (member, base + u32::from(rank < extra)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn members(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn counts(assignment: &BTreeMap<u32, String>) -> BTreeMap<String, u32> {
        let mut counts = BTreeMap::new();
        for owner in assignment.values() {
            *counts.entry(owner.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// The fewest partitions that must leave a member still in the group: its holdings
    /// above the quota it gets when the larger quotas go to the largest holders.
    fn fewest_moves(
        partitions: u32,
        members: &BTreeSet<String>,
        current: &BTreeMap<u32, String>,
    ) -> u32 {
        let n = members.len() as u32;
        let mut held: Vec<u32> = members
            .iter()
            .map(|m| current.range(..partitions).filter(|(_, o)| *o == m).count() as u32)
            .collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        held.iter()
            .enumerate()
            .map(|(i, h)| {
                let quota = partitions / n + u32::from((i as u32) < partitions % n);
                h.saturating_sub(quota)
            })
            .sum()
    }

    /// Every property the assignment promises, checked on one input.
    fn check(partitions: u32, members: &BTreeSet<String>, current: &BTreeMap<u32, String>) {
        let target = assign(partitions, members, current);
        let n = members.len() as u32;
        assert_eq!(
            target.len() as u32,
            partitions,
            "every partition has an owner"
        );
        assert!(target.keys().all(|p| *p < partitions));
        assert!(
            target.values().all(|o| members.contains(o)),
            "owners are members"
        );
        let counts = counts(&target);
        for member in members {
            let count = counts.get(member).copied().unwrap_or(0);
            assert!(
                count == partitions / n || count == partitions.div_ceil(n),
                "{member} owns {count} of {partitions} with {n} members"
            );
        }
        let moved = current
            .range(..partitions)
            .filter(|(p, owner)| members.contains(*owner) && target.get(*p) != Some(*owner))
            .count() as u32;
        assert_eq!(
            moved,
            fewest_moves(partitions, members, current),
            "moves the minimum"
        );
        assert_eq!(
            assign(partitions, members, current),
            target,
            "deterministic"
        );
    }

    #[test]
    fn a_lone_member_owns_every_partition() {
        let target = assign(32, &members(&["a"]), &BTreeMap::new());
        assert_eq!(target.len(), 32);
        assert!(target.values().all(|o| o == "a"));
    }

    #[test]
    fn no_members_own_nothing() {
        assert!(assign(32, &BTreeSet::new(), &BTreeMap::new()).is_empty());
    }

    #[test]
    fn a_joining_member_takes_only_what_it_needs_from_the_others() {
        let before = assign(32, &members(&["a"]), &BTreeMap::new());
        let after = assign(32, &members(&["a", "b"]), &before);
        let counts = counts(&after);
        assert_eq!(counts.get("a"), Some(&16));
        assert_eq!(counts.get("b"), Some(&16));
        // Every partition that changed hands went to the newcomer.
        for (p, owner) in &after {
            if before.get(p) != Some(owner) {
                assert_eq!(owner, "b");
            }
        }
    }

    #[test]
    fn a_leaving_members_partitions_are_the_only_ones_that_move() {
        let three = members(&["a", "b", "c"]);
        let before = assign(32, &three, &BTreeMap::new());
        let after = assign(32, &members(&["a", "c"]), &before);
        for (p, owner) in &before {
            if owner != "b" {
                assert_eq!(after.get(p), Some(owner), "partition {p} stayed");
            }
        }
        check(32, &members(&["a", "c"]), &before);
    }

    #[test]
    fn the_larger_shares_go_to_those_already_holding_more() {
        // a holds 3, b holds 2 of 5; c joins: quotas 2,2,1 and only one partition moves.
        let current: BTreeMap<u32, String> = [(0, "a"), (1, "a"), (2, "a"), (3, "b"), (4, "b")]
            .into_iter()
            .map(|(p, o)| (p, o.to_owned()))
            .collect();
        let target = assign(5, &members(&["a", "b", "c"]), &current);
        let changed = (0..5).filter(|p| target.get(p) != current.get(p)).count();
        assert_eq!(changed, 1);
        assert_eq!(counts(&target).get("c"), Some(&1));
    }

    #[test]
    fn holders_outside_the_group_and_out_of_range_partitions_are_ignored() {
        let current: BTreeMap<u32, String> = [(0, "gone"), (1, "a"), (40, "a")]
            .into_iter()
            .map(|(p, o)| (p, o.to_owned()))
            .collect();
        let target = assign(4, &members(&["a", "b"]), &current);
        assert_eq!(target.len(), 4);
        assert_eq!(target.get(&1).map(String::as_str), Some("a"));
        assert!(target.values().all(|o| o != "gone"));
    }

    #[test]
    fn one_partition_is_one_active_member_and_standbys() {
        let group = members(&["a", "b", "c"]);
        let first = assign(1, &group, &BTreeMap::new());
        assert_eq!(first.len(), 1);
        // Whoever holds it keeps it while it stays a member.
        let held: BTreeMap<u32, String> = [(0, "c".to_owned())].into_iter().collect();
        assert_eq!(assign(1, &group, &held), held);
    }

    #[test]
    fn random_holdings_always_give_a_balanced_minimal_assignment() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let names: Vec<String> = (0..9).map(|i| format!("m{i}")).collect();
        for _ in 0..2_000 {
            let partitions = rng.gen_range(1..=64);
            let group: BTreeSet<String> = names
                .iter()
                .filter(|_| rng.gen_bool(0.5))
                .cloned()
                .collect();
            if group.is_empty() {
                continue;
            }
            // Arbitrary, possibly unbalanced holdings, some by non-members, some gaps.
            let current: BTreeMap<u32, String> = (0..partitions)
                .filter_map(|p| {
                    let owner = &names[rng.gen_range(0..names.len())];
                    rng.gen_bool(0.8).then(|| (p, owner.clone()))
                })
                .collect();
            check(partitions, &group, &current);
        }
    }

    #[test]
    fn joins_and_leaves_in_sequence_move_only_what_they_must() {
        let mut rng = StdRng::seed_from_u64(42);
        for partitions in [1, 16, 32, 33] {
            let mut group = BTreeSet::new();
            let mut current = BTreeMap::new();
            for step in 0..300 {
                let joining = group.is_empty() || (group.len() < 12 && rng.gen_bool(0.55));
                let changed = if joining {
                    let name = format!("m{step}");
                    group.insert(name.clone());
                    name
                } else {
                    let victim = group
                        .iter()
                        .nth(rng.gen_range(0..group.len()))
                        .cloned()
                        .expect("a member");
                    group.remove(&victim);
                    victim
                };
                if group.is_empty() {
                    current.clear();
                    continue;
                }
                check(partitions, &group, &current);
                let next = assign(partitions, &group, &current);
                for (p, owner) in &next {
                    match current.get(p) {
                        // A join moves partitions to the newcomer only.
                        Some(before) if before != owner && joining => assert_eq!(owner, &changed),
                        // A leave moves the leaver's partitions only.
                        Some(before) if before != owner => assert_eq!(before, &changed),
                        _ => {}
                    }
                }
                current = next;
            }
        }
    }
}
