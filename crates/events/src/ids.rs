//! Identifier and money newtypes, so an order id can never be passed where a sku is expected.
//!
//! Ids are 1–64 characters from `[A-Za-z0-9_-]`: that keeps every id a safe NATS
//! subject token, which the subject scheme relies on.

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

use crate::DecodeError;

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// How many characters of a refused value an error repeats.
pub const SHOWN_VALUE_LEN: usize = MAX_ID_LEN;

/// A refused value as an error repeats it: escaped to printable ASCII and cut after
/// [`SHOWN_VALUE_LEN`] characters. Errors end up in places with rules of their own (a
/// micro endpoint's 400 travels in the `Nats-Service-Error` header, where async-nats
/// panics on a line break and the server refuses more than max_payload), so hostile
/// bytes must not ride along verbatim.
pub fn shown_value(value: &str) -> String {
    let mut shown: String = value
        .chars()
        .take(SHOWN_VALUE_LEN)
        .flat_map(char::escape_default)
        .collect();
    if value.chars().nth(SHOWN_VALUE_LEN).is_some() {
        shown.push_str("...");
    }
    shown
}

/// Checks the id rule shared by every id and sku; returns the reason it fails.
pub fn check_token(value: &str) -> Result<(), &'static str> {
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.len() > MAX_ID_LEN {
        return Err("must be at most 64 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err("may only contain A-Z, a-z, 0-9, '_' and '-'");
    }
    Ok(())
}

macro_rules! token_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates an id.
            pub fn parse(value: impl Into<String>) -> Result<Self, DecodeError> {
                let value = value.into();
                match check_token(&value) {
                    Ok(()) => Ok(Self(value)),
                    Err(reason) => Err(DecodeError::InvalidId {
                        kind: $kind,
                        value: shown_value(&value),
                        reason,
                    }),
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = DecodeError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!({
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 64,
                    "pattern": "^[A-Za-z0-9_-]{1,64}$"
                })
            }
        }
    };
}

token_id!(
    /// An order's id; also the saga's correlation id and the last subject token of order events.
    OrderId,
    "order id"
);
token_id!(
    /// A stock keeping unit; the last subject token of replenishment events.
    Sku,
    "sku"
);
token_id!(
    /// The customer who placed an order.
    CustomerId,
    "customer id"
);
token_id!(
    /// The gateway's id for a capture.
    PaymentId,
    "payment id"
);

/// An amount in minor units of its currency (1250 means 12.50).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Money(pub i64);

impl Money {
    pub const ZERO: Money = Money(0);

    pub fn minor_units(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl JsonSchema for Money {
    fn schema_name() -> Cow<'static, str> {
        "Money".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "integer",
            "format": "int64",
            "description": "Amount in minor units of the currency (1250 means 12.50)"
        })
    }
}

/// An ISO 4217 currency code: three upper-case letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(value: &str) -> Result<Self, DecodeError> {
        match value.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => Ok(Self([*a, *b, *c])),
            _ => Err(DecodeError::InvalidId {
                kind: "currency",
                value: shown_value(value),
                reason: "must be three upper-case letters (ISO 4217)",
            }),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters are ever stored, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl TryFrom<String> for Currency {
    type Error = DecodeError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> String {
        value.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JsonSchema for Currency {
    fn schema_name() -> Cow<'static, str> {
        "Currency".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": "^[A-Z]{3}$" })
    }
}
