//! Where a group's facts live inside the caller's bucket: one key for the partition
//! count, one per member, one per partition's lease, all under the group's name.
//!
//! The caller names the bucket and the group; this file only fixes the layout under
//! them, so several groups (checkout, payment, inventory) can share one bucket.

/// The keys of one group.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    group: String,
}

/// What a key in the group's part of the bucket stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Key {
    Partitions,
    Member(String),
    Lease(u32),
}

impl Keys {
    pub(crate) fn new(group: &str) -> Keys {
        Keys {
            group: group.to_owned(),
        }
    }

    /// The recorded partition count: written once, never expires.
    pub(crate) fn partitions(&self) -> String {
        format!("{}.partitions", self.group)
    }

    /// A member's heartbeat.
    pub(crate) fn member(&self, instance: &str) -> String {
        format!("{}.members.{instance}", self.group)
    }

    /// A partition's lease.
    pub(crate) fn lease(&self, partition: u32) -> String {
        format!("{}.leases.{partition}", self.group)
    }

    /// Every key of the group, for one watch.
    pub(crate) fn all(&self) -> String {
        format!("{}.>", self.group)
    }

    /// What `key` is, if it belongs to this group's layout.
    pub(crate) fn parse(&self, key: &str) -> Option<Key> {
        let rest = key.strip_prefix(&self.group)?.strip_prefix('.')?;
        if rest == "partitions" {
            return Some(Key::Partitions);
        }
        if let Some(instance) = rest.strip_prefix("members.") {
            return (!instance.is_empty() && !instance.contains('.'))
                .then(|| Key::Member(instance.to_owned()));
        }
        rest.strip_prefix("leases.")
            .and_then(|p| p.parse().ok())
            .map(Key::Lease)
    }
}

/// Whether `name` can be one token of a key: letters, digits, `-`, `_`, `=`.
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses_back_to_what_it_stands_for() {
        let keys = Keys::new("checkout");
        assert_eq!(keys.parse(&keys.partitions()), Some(Key::Partitions));
        assert_eq!(
            keys.parse(&keys.member("checkout-2")),
            Some(Key::Member("checkout-2".to_owned()))
        );
        assert_eq!(keys.parse(&keys.lease(31)), Some(Key::Lease(31)));
    }

    #[test]
    fn another_groups_keys_and_strangers_are_not_ours() {
        let keys = Keys::new("checkout");
        assert_eq!(keys.parse("payment.leases.1"), None);
        assert_eq!(keys.parse("checkoutx.leases.1"), None);
        assert_eq!(keys.parse("checkout.leases.x"), None);
        assert_eq!(keys.parse("checkout.members.a.b"), None);
    }

    #[test]
    fn names_with_dots_or_wildcards_are_not_tokens() {
        assert!(is_token("checkout-1"));
        assert!(!is_token("a.b"));
        assert!(!is_token("*"));
        assert!(!is_token(""));
    }
}
