//! Names the permissions of each NATS identity are computed from and that are not built
//! elsewhere in the contract: which domain each service publishes, which streams it reads,
//! its keys in the groups bucket, and the private inbox prefix of each client.
//!
//! `shop-auth` turns these into nats-server allow lists; keeping them here means the
//! rights follow the contract when it changes instead of drifting in a second place.

use crate::api::service;
use crate::stream::Domain;

/// The one domain whose events `service` publishes (its outbox, its endpoints that publish,
/// the dead letters it replays); `None` for a name that is not a shop service.
pub fn published_domain(service: &str) -> Option<Domain> {
    match service {
        service::CHECKOUT => Some(Domain::Orders),
        service::INVENTORY => Some(Domain::Inventory),
        service::PAYMENT => Some(Domain::Payments),
        _ => None,
    }
}

/// The domains whose streams `service` consumes, per the saga table (crate docs): checkout
/// follows all three, inventory the orders and its own replenishments, payment the orders
/// and the reservations. Empty for a name that is not a shop service.
pub fn consumed_domains(service: &str) -> &'static [Domain] {
    match service {
        service::CHECKOUT => &[Domain::Orders, Domain::Inventory, Domain::Payments],
        service::INVENTORY => &[Domain::Orders, Domain::Inventory],
        service::PAYMENT => &[Domain::Orders, Domain::Inventory],
        _ => &[],
    }
}

/// Every key of `service`'s group in [`crate::partition::GROUPS_BUCKET`] (`<service>.>`):
/// its partition count, members and leases.
pub fn group_keys(service: &str) -> String {
    format!("{service}.>")
}

/// The private inbox prefix of a client acting as `role` (`_INBOX_storefront`): replies to
/// its requests arrive under it, and only that identity may subscribe there.
pub fn inbox_prefix(role: &str) -> String {
    format!("_INBOX_{role}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_publishes_one_domain_and_reads_what_the_saga_needs() {
        for name in service::ALL {
            let own = published_domain(name).map(Domain::token);
            assert_eq!(own, Some(domain_token_of(name)), "{name}");
            assert!(consumed_domains(name).contains(&Domain::Orders), "{name}");
        }
        assert_eq!(published_domain("storefront"), None);
        assert!(consumed_domains("storefront").is_empty());
    }

    fn domain_token_of(service: &str) -> &'static str {
        match service {
            service::CHECKOUT => "orders",
            service::INVENTORY => "inventory",
            _ => "payments",
        }
    }

    #[test]
    fn inboxes_and_group_keys_read_well() {
        assert_eq!(inbox_prefix("storefront"), "_INBOX_storefront");
        assert_eq!(group_keys("payment"), "payment.>");
    }
}
