//! What is wrong with an order: one typed problem per field, shared by the validation
//! that finds them and the `OrderRejected` event that reports them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What is wrong with one field of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemCode {
    InvalidId,
    NoLines,
    TooManyLines,
    DuplicateSku,
    QuantityOutOfRange,
    NegativeUnitPrice,
    TotalMismatch,
    AmountOverflow,
    InvalidCurrency,
    MissingPaymentToken,
}

/// One problem with an order: the field (a JSON path), a typed code and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Problem {
    pub field: String,
    pub code: ProblemCode,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(
        field: impl Into<String>,
        code: ProblemCode,
        message: impl Into<String>,
    ) -> Problem {
        Problem {
            field: field.into(),
            code,
            message: message.into(),
        }
    }
}
