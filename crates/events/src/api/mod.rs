//! The request/reply side of the contract: every micro-service endpoint's subject, its
//! request body and its reply, for the services that serve them and every client that
//! calls them (operators' tools, the harness, the bench, upstream systems).
//!
//! Endpoint subjects are `<service>.<group>.<verb>` and are built only by the
//! [`endpoint!`] macro here, so a name cannot drift between server and client.
//! Requests and replies are JSON; an error reply carries `Nats-Service-Error-Code`
//! (400 bad input, 404 unknown, 500 internal) and a description a person can act on.

use serde::{Deserialize, Serialize};

pub mod checkout;
pub mod deadletters;
pub mod inventory;
pub mod payment;

/// One micro-service endpoint: its name in `nats micro info` and the subject it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The service that serves it, as registered with NATS micro (`nats micro ls`).
    pub service: &'static str,
    /// `<group>_<verb>`, the endpoint's name inside its service.
    pub name: &'static str,
    /// `<service>.<group>.<verb>`.
    pub subject: &'static str,
}

impl Endpoint {
    /// The endpoint of `endpoints` registered under `name`, for a server's dispatch.
    pub fn find(endpoints: &[Endpoint], name: &str) -> Option<Endpoint> {
        endpoints.iter().copied().find(|e| e.name == name)
    }

    /// `(name, subject)`, the pair the micro-service scaffold registers.
    pub fn registration(self) -> (&'static str, &'static str) {
        (self.name, self.subject)
    }
}

/// Builds an [`Endpoint`] at compile time from its three tokens; the only place an
/// endpoint subject is spelled. The service is an identifier because `concat!` takes
/// only literals; a test checks it against [`service`].
macro_rules! endpoint {
    ($service:ident, $group:literal, $verb:literal) => {
        $crate::api::Endpoint {
            service: stringify!($service),
            name: concat!($group, "_", $verb),
            subject: concat!(stringify!($service), ".", $group, ".", $verb),
        }
    };
}
pub(crate) use endpoint;

/// The service names, as registered with NATS micro and used in consumer names,
/// dead-letter subjects and `Nats-Service` replies.
pub mod service {
    pub const CHECKOUT: &str = "checkout";
    pub const INVENTORY: &str = "inventory";
    pub const PAYMENT: &str = "payment";
    /// Every service of the shop, in saga order.
    pub const ALL: [&str; 3] = [CHECKOUT, INVENTORY, PAYMENT];
}

/// The upstream systems the contract knows, by the name they use as an event's `source`
/// and as their NATS identity: the storefront places and cancels orders, the warehouse
/// replenishes stock (`rights_names::publishers` says which kinds each may publish).
pub mod upstream {
    pub const STOREFRONT: &str = "storefront";
    pub const WAREHOUSE: &str = "warehouse";
    /// Every upstream system.
    pub const ALL: [&str; 2] = [STOREFRONT, WAREHOUSE];
}

/// Every endpoint of every service, for docs, permissions and tests.
pub fn all_endpoints() -> Vec<Endpoint> {
    let mut all = Vec::new();
    all.extend(checkout::ENDPOINTS);
    all.extend(inventory::ENDPOINTS);
    all.extend(payment::ENDPOINTS);
    all
}

/// A request that names one order: `{"order_id": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRef {
    pub order_id: String,
}

impl OrderRef {
    pub fn new(order_id: impl Into<String>) -> OrderRef {
        OrderRef {
            order_id: order_id.into(),
        }
    }
}

/// A request with no fields: `{}`, or no body at all (`parse_request` reads an empty body
/// and `null` as `{}`). A field is refused with a 400, unlike the other requests, which
/// ignore fields they do not know: an endpoint that takes nothing has nothing to grow
/// into, and a caller who sends `{"sku": …}` to a list endpoint has the wrong endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_endpoint_belongs_to_a_known_service_and_has_a_unique_subject() {
        let all = all_endpoints();
        let subjects: HashSet<&str> = all.iter().map(|e| e.subject).collect();
        assert_eq!(subjects.len(), all.len());
        for (service, endpoints) in [
            (service::CHECKOUT, &checkout::ENDPOINTS[..]),
            (service::INVENTORY, &inventory::ENDPOINTS[..]),
            (service::PAYMENT, &payment::ENDPOINTS[..]),
        ] {
            for e in endpoints {
                assert_eq!(e.service, service);
                let (group, verb) = e.name.split_once('_').expect("group_verb");
                assert_eq!(e.subject, format!("{service}.{group}.{verb}"));
                assert_eq!(Endpoint::find(endpoints, e.name), Some(*e));
            }
        }
    }
}
