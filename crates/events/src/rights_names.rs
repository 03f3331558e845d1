//! Names the permissions of each NATS identity are computed from and that are not built
//! elsewhere in the contract: which domain each service publishes, which streams it reads,
//! its keys in the groups bucket, and the private inbox prefix of each client.
//!
//! `shop-auth` turns these into nats-server allow lists; keeping them here means the
//! rights follow the contract when it changes instead of drifting in a second place.

use crate::api::{service, upstream};
use crate::events::EventKind;
use crate::stream::Domain;

/// The sources that may publish `kind`, which is also who holds the right to publish it.
///
/// A service's own reactions come from that service alone. The three upstream kinds come
/// from their upstream system, or from the service endpoint that publishes them on its
/// behalf (`checkout.orders.place|cancel`, `inventory.stock.replenish`). A consumer
/// dead-letters an event whose `source` is not listed (`Envelope::check_source`): with
/// least privilege the server already refuses such a publish, and without it (a shop run
/// with auth off, or a leaked key of another role) the check still stops a storefront from
/// announcing a capture. A new upstream system is added here, in the versioned contract.
pub fn publishers(kind: EventKind) -> &'static [&'static str] {
    match kind {
        EventKind::OrderPlaced | EventKind::OrderCancellationRequested => {
            &[upstream::STOREFRONT, service::CHECKOUT]
        }
        EventKind::StockReplenished => &[upstream::WAREHOUSE, service::INVENTORY],
        EventKind::OrderRejected | EventKind::OrderConfirmed | EventKind::OrderCancelled => {
            &[service::CHECKOUT]
        }
        EventKind::StockReserved
        | EventKind::StockReservationFailed
        | EventKind::StockReleased
        | EventKind::StockCommitted => &[service::INVENTORY],
        EventKind::PaymentCaptured | EventKind::PaymentDeclined | EventKind::PaymentRefunded => {
            &[service::PAYMENT]
        }
    }
}

/// The kinds an upstream system publishes (empty for a name the contract does not know).
pub fn upstream_kinds(system: &str) -> Vec<EventKind> {
    EventKind::ALL
        .iter()
        .copied()
        .filter(|k| !service::ALL.contains(&system) && publishers(*k).contains(&system))
        .collect()
}

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
    fn a_service_publishes_only_its_own_domain_and_upstream_systems_only_their_kinds() {
        for kind in EventKind::ALL.iter().copied() {
            for source in publishers(kind) {
                if let Some(domain) = published_domain(source) {
                    assert_eq!(domain.token(), kind.domain(), "{source} publishes {kind:?}");
                }
            }
        }
        assert_eq!(
            upstream_kinds(upstream::STOREFRONT),
            [
                EventKind::OrderPlaced,
                EventKind::OrderCancellationRequested
            ]
        );
        assert_eq!(
            upstream_kinds(upstream::WAREHOUSE),
            [EventKind::StockReplenished]
        );
        assert!(upstream_kinds(service::PAYMENT).is_empty());
        assert!(upstream_kinds("mallory").is_empty());
    }

    #[test]
    fn inboxes_and_group_keys_read_well() {
        assert_eq!(inbox_prefix("storefront"), "_INBOX_storefront");
        assert_eq!(group_keys("payment"), "payment.>");
    }
}
