//! The identities that connect to the shop's NATS, one key each.

use std::fmt;
use std::str::FromStr;

use shop_events::api::{service, upstream};
use shop_events::rights_names::inbox_prefix;

/// Who connects: the three services, the two upstream systems, people operating the shop,
/// and the administrator who owns the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Checkout,
    Inventory,
    Payment,
    /// Places and cancels orders (publishes them, or asks checkout).
    Storefront,
    /// Feeds stock in.
    Warehouse,
    /// Reads streams, consumers and STATS; runs trace, audit and demo; replays and discards dead letters.
    Operator,
    /// Declares and deletes streams and consumers: the only identity with every right.
    Admin,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Checkout,
        Role::Inventory,
        Role::Payment,
        Role::Storefront,
        Role::Warehouse,
        Role::Operator,
        Role::Admin,
    ];

    /// The role's name: the key file's stem (`<name>.nk`) and its inbox's suffix. A
    /// service's name is the contract's service name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Checkout => service::CHECKOUT,
            Role::Inventory => service::INVENTORY,
            Role::Payment => service::PAYMENT,
            Role::Storefront => upstream::STOREFRONT,
            Role::Warehouse => upstream::WAREHOUSE,
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role of the shop service called `name`, if it is one.
    pub fn of_service(name: &str) -> Option<Role> {
        [Role::Checkout, Role::Inventory, Role::Payment]
            .into_iter()
            .find(|r| r.name() == name)
    }

    /// The service this role runs, for the three service roles.
    pub fn service(self) -> Option<&'static str> {
        match self {
            Role::Checkout | Role::Inventory | Role::Payment => Some(self.name()),
            _ => None,
        }
    }

    /// `_INBOX_<role>`: where replies to this role's requests arrive.
    pub fn inbox_prefix(self) -> String {
        inbox_prefix(self.name())
    }

    /// `<role>.nk`, the seed file's name in an auth directory.
    pub fn key_file(self) -> String {
        format!("{}.nk", self.name())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown role `{s}`"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_services_are_the_contract_services() {
        for role in Role::ALL {
            assert_eq!(role.name().parse::<Role>(), Ok(role));
        }
        let services: Vec<_> = Role::ALL.iter().filter_map(|r| r.service()).collect();
        assert_eq!(services, service::ALL);
        assert_eq!(Role::of_service("payment"), Some(Role::Payment));
        assert_eq!(Role::of_service("admin"), None);
    }
}
