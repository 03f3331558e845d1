//! Partitioning, part of the contract: which partition an order (or sku) belongs to, the
//! fixed partition count, and the names of everything partitioned ownership uses
//! (the consumers of one partition, the group and state buckets).
//!
//! A key's partition is FNV-1a (32 bit) modulo the partition count, the same arithmetic
//! as nats-server's subject-mapping function `partition(n, token)`. The event streams
//! use that function (see [`crate::subjects::stream_specs`]): every stored event subject
//! ends with its key's partition, so a consumer can take one partition's events and a
//! service here finds a key in the partition the server put it in.

/// FNV-1a's 32-bit offset basis and prime (the Go standard library's `hash/fnv`, which
/// nats-server uses).
const OFFSET_BASIS: u32 = 0x811c_9dc5;
const PRIME: u32 = 0x0100_0193;

/// FNV-1a of `bytes`: xor each byte in, then multiply, wrapping at 32 bits.
pub fn fnv1a_32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(OFFSET_BASIS, |hash, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(PRIME)
    })
}

/// The partition of `key` among `partitions` (numbered from 0).
///
/// The server hashes the bytes of the mapped token(s); with several tokens it hashes
/// them concatenated without separator, so callers pass the same concatenation.
/// A count of 0 is not a partitioning; every key then lands in partition 0 instead of
/// dividing by zero.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    fnv1a_32(key.as_bytes())
        .checked_rem(partitions)
        .unwrap_or(0)
}

/// Partitions the shop's keys hash into. Fixed: it is part of every stored event
/// subject (the streams' subject transform), so changing it means new streams. Sixteen
/// spread evenly over 1, 2, 4, 8 or 16 instances and over 3 within one partition.
pub const PARTITIONS: u32 = 16;

/// The partition of an order id or sku among the shop's [`PARTITIONS`].
pub fn partition_of_key(key: &str) -> u32 {
    partition_of(key, PARTITIONS)
}

/// The KV bucket holding every service group's partition count, members and leases
/// (keys `<service>.partitions`, `<service>.members.<instance>`, `<service>.leases.<p>`).
pub const GROUPS_BUCKET: &str = "SHOP_GROUPS";

/// The KV bucket holding one service's changelog: one record per order (or, for
/// inventory, per key it keeps), under `<partition>.<key>`, so a new owner of a
/// partition starts from what the last owner committed.
pub fn state_bucket(service: &str) -> String {
    format!("SHOP_STATE_{}", service.to_ascii_uppercase())
}

/// The durable consumer of one service on one stream for one partition
/// (`payment-p07`), or for every partition (`inventory`, which runs active/standby).
pub fn partition_consumer(service: &str, partition: Option<u32>) -> String {
    match partition {
        Some(p) => format!("{service}-p{p:02}"),
        None => service.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_well_in_the_nats_cli() {
        assert_eq!(partition_consumer("payment", Some(7)), "payment-p07");
        assert_eq!(partition_consumer("inventory", None), "inventory");
        assert_eq!(state_bucket("checkout"), "SHOP_STATE_CHECKOUT");
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // From the FNV reference test suite (Noll), 32-bit FNV-1a.
        assert_eq!(fnv1a_32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a_32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a_32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn a_key_lands_where_the_server_mapping_would_put_it() {
        // fnv1a("a") = 3826002220; 3826002220 % 32 = 12, % 16 = 12, % 10 = 0.
        assert_eq!(partition_of("a", 32), 12);
        assert_eq!(partition_of("a", 16), 12);
        assert_eq!(partition_of("a", 10), 0);
        // fnv1a("foobar") = 3214735720; % 32 = 8, % 7 = 3214735720 - 7 * 459247960 = 0.
        assert_eq!(partition_of("foobar", 32), 8);
        assert_eq!(partition_of("foobar", 7), 0);
    }

    #[test]
    fn one_partition_takes_every_key() {
        for key in ["", "a", "order-1", "ünïcødé"] {
            assert_eq!(partition_of(key, 1), 0);
        }
    }

    #[test]
    fn zero_partitions_do_not_panic() {
        assert_eq!(partition_of("a", 0), 0);
    }

    #[test]
    fn keys_spread_over_every_partition() {
        let mut seen = [0u32; 32];
        for n in 0..3200 {
            let p = partition_of(&format!("order-{n}"), 32);
            seen[p as usize] += 1;
        }
        // A good spread, not an exact one: each partition within half of the mean.
        assert!(
            seen.iter().all(|&count| (50..=150).contains(&count)),
            "{seen:?}"
        );
    }
}
