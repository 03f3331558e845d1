//! The rules a placed order must follow, checked the same way by every service.
//!
//! Validation reports every problem at once, as typed codes, and on success
//! returns a [`ValidOrder`] whose types make the broken states unrepresentable.

use serde::{Deserialize, Serialize};

use crate::events::OrderPlaced;
use crate::ids::{check_token, Currency, CustomerId, Money, OrderId, Sku};
pub use crate::problem::{Problem, ProblemCode};

pub const MAX_LINES: usize = 100;
pub const MAX_QUANTITY: i64 = 10_000;
pub const MAX_PAYMENT_TOKEN_LEN: usize = 256;

/// One line of an order that passed validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidLine {
    pub sku: Sku,
    pub quantity: u32,
    pub unit_price: Money,
}

/// An order that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidOrder {
    pub order_id: OrderId,
    pub customer_id: CustomerId,
    pub currency: Currency,
    pub lines: Vec<ValidLine>,
    pub total: Money,
    pub payment_token: String,
}

impl OrderPlaced {
    /// Checks every rule and returns all problems found, or the typed order.
    pub fn validate(&self) -> Result<ValidOrder, Vec<Problem>> {
        let mut problems = Vec::new();
        let customer_id = CustomerId::parse(self.customer_id.clone())
            .map_err(|e| {
                problems.push(Problem::new(
                    "customer_id",
                    ProblemCode::InvalidId,
                    e.to_string(),
                ))
            })
            .ok();
        let currency = Currency::parse(&self.currency)
            .map_err(|_| {
                problems.push(Problem::new(
                    "currency",
                    ProblemCode::InvalidCurrency,
                    format!(
                        "`{}` is not three upper-case letters (ISO 4217)",
                        self.currency
                    ),
                ))
            })
            .ok();
        if self.payment_token.trim().is_empty() {
            problems.push(Problem::new(
                "payment_token",
                ProblemCode::MissingPaymentToken,
                "must not be empty",
            ));
        } else if self.payment_token.len() > MAX_PAYMENT_TOKEN_LEN {
            problems.push(Problem::new(
                "payment_token",
                ProblemCode::MissingPaymentToken,
                format!("must be at most {MAX_PAYMENT_TOKEN_LEN} characters"),
            ));
        }
        if self.lines.is_empty() {
            problems.push(Problem::new(
                "lines",
                ProblemCode::NoLines,
                "an order needs at least one line",
            ));
        } else if self.lines.len() > MAX_LINES {
            problems.push(Problem::new(
                "lines",
                ProblemCode::TooManyLines,
                format!(
                    "an order has at most {MAX_LINES} lines, this one has {}",
                    self.lines.len()
                ),
            ));
        }

        let mut lines = Vec::with_capacity(self.lines.len());
        let mut sum: Option<i64> = Some(0);
        let mut seen = std::collections::HashSet::new();
        for (i, line) in self.lines.iter().enumerate() {
            let field = |name: &str| format!("lines[{i}].{name}");
            let sku = match check_token(&line.sku) {
                Ok(()) => Sku::parse(line.sku.clone()).ok(),
                Err(reason) => {
                    problems.push(Problem::new(
                        field("sku"),
                        ProblemCode::InvalidId,
                        format!("sku {reason}"),
                    ));
                    None
                }
            };
            if !seen.insert(line.sku.as_str()) {
                problems.push(Problem::new(
                    field("sku"),
                    ProblemCode::DuplicateSku,
                    format!("sku `{}` appears more than once", line.sku),
                ));
            }
            let quantity_ok = (1..=MAX_QUANTITY).contains(&line.quantity);
            if !quantity_ok {
                problems.push(Problem::new(
                    field("quantity"),
                    ProblemCode::QuantityOutOfRange,
                    format!(
                        "must be between 1 and {MAX_QUANTITY}, got {}",
                        line.quantity
                    ),
                ));
            }
            if line.unit_price < 0 {
                problems.push(Problem::new(
                    field("unit_price"),
                    ProblemCode::NegativeUnitPrice,
                    format!("must not be negative, got {}", line.unit_price),
                ));
            }
            sum = sum.and_then(|s| {
                line.quantity
                    .checked_mul(line.unit_price)
                    .and_then(|x| s.checked_add(x))
            });
            if let (Some(sku), true, true) = (sku, quantity_ok, line.unit_price >= 0) {
                lines.push(ValidLine {
                    sku,
                    // quantity_ok bounds it to 1..=10_000.
                    quantity: line.quantity as u32,
                    unit_price: Money(line.unit_price),
                });
            }
        }
        match sum {
            None => problems.push(Problem::new(
                "total",
                ProblemCode::AmountOverflow,
                "the sum of quantity × unit_price overflows a 64-bit amount",
            )),
            Some(expected) if expected != self.total => problems.push(Problem::new(
                "total",
                ProblemCode::TotalMismatch,
                format!("is {} but the lines add up to {expected}", self.total),
            )),
            Some(_) => {}
        }

        match (customer_id, currency, problems.is_empty()) {
            (Some(customer_id), Some(currency), true) => Ok(ValidOrder {
                order_id: self.order_id.clone(),
                customer_id,
                currency,
                lines,
                total: Money(self.total),
                payment_token: self.payment_token.clone(),
            }),
            _ => Err(crate::problem::cap_problems(problems)),
        }
    }
}
