//! The three event domains and the streams that hold them, by name.
//!
//! Kept apart from `subjects` so the event types can name their stream without
//! depending on the subject builders, which depend on the event types.

/// The three event domains, one stream each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Domain {
    Orders,
    Inventory,
    Payments,
}

impl Domain {
    pub const ALL: [Domain; 3] = [Domain::Orders, Domain::Inventory, Domain::Payments];

    pub fn token(self) -> &'static str {
        match self {
            Domain::Orders => "orders",
            Domain::Inventory => "inventory",
            Domain::Payments => "payments",
        }
    }

    pub fn stream(self) -> &'static str {
        match self {
            Domain::Orders => ORDERS_STREAM,
            Domain::Inventory => INVENTORY_STREAM,
            Domain::Payments => PAYMENTS_STREAM,
        }
    }

    /// The wildcard subject the domain's stream captures.
    pub fn wildcard(self) -> String {
        format!("events.{}.>", self.token())
    }
}

pub const ORDERS_STREAM: &str = "ORDERS";
pub const INVENTORY_STREAM: &str = "INVENTORY";
pub const PAYMENTS_STREAM: &str = "PAYMENTS";
pub const DEADLETTER_STREAM: &str = "DEADLETTER";

/// The streams that hold events, in saga order; the dead-letter stream is not one of them.
pub const EVENT_STREAMS: [&str; 3] = [ORDERS_STREAM, INVENTORY_STREAM, PAYMENTS_STREAM];
