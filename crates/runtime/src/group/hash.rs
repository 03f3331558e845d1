//! Which partition a key belongs to: FNV-1a (32 bit) modulo the partition count, the
//! same arithmetic as nats-server's subject-mapping function `partition(n, token)`.
//!
//! Agreeing with the server matters: an operator may map `events.x.<id>` to
//! `events.x.<partition>.<id>` on the server, and a member must then find a key in the
//! partition the server put it in.

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

#[cfg(test)]
mod tests {
    use super::*;

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
