//! What a demo run will do, decided up front and without I/O: which skus get how much
//! stock, and which orders are placed with which intent.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;
use shop_events::{OrderId, OrderLineInput, OrderPlaced};

use crate::OpsError;

/// What an order of the demo is meant to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// A good card on stocked skus: should be confirmed.
    Paid,
    /// A card the gateway declines: cancelled, stock released.
    Declined,
    /// More of the scarce sku than exists: cancelled out of stock.
    OutOfStock,
    /// Cancelled by the customer as soon as checkout knows it.
    CancelPending,
    /// Cancelled by the customer once confirmed: refunded and restocked.
    CancelConfirmed,
    /// Breaks the rules: `checkout.orders.place` answers 400 listing the problems.
    Invalid,
}

/// The mix, per 20 orders: mostly good orders, with every unhappy path represented.
const MIX: [Scenario; 20] = [
    Scenario::Paid,
    Scenario::Paid,
    Scenario::Paid,
    Scenario::Paid,
    Scenario::Paid,
    Scenario::Paid,
    Scenario::Paid,
    Scenario::Paid,
    Scenario::Paid,
    Scenario::Paid,
    Scenario::Paid,
    Scenario::Declined,
    Scenario::Declined,
    Scenario::Declined,
    Scenario::OutOfStock,
    Scenario::OutOfStock,
    Scenario::CancelPending,
    Scenario::CancelConfirmed,
    Scenario::Invalid,
    Scenario::Invalid,
];

const GOOD_CARDS: [&str; 2] = ["tok_visa", "tok_mastercard"];
const DECLINED_CARDS: [&str; 2] = ["tok_chargeDeclined", "tok_chargeDeclinedInsufficientFunds"];
const PRICES: [i64; 5] = [150, 499, 1250, 2999, 8900];
/// Units of the scarce sku on the shelf; out-of-stock orders always ask for more.
const SCARCE_STOCK: u32 = 1;

/// One order the demo will place.
#[derive(Debug, Clone)]
pub struct PlannedOrder {
    pub order_id: String,
    pub scenario: Scenario,
    pub order: OrderPlaced,
}

/// The whole run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub run_id: String,
    /// (sku, units to replenish before any order is placed).
    pub stock: Vec<(String, u32)>,
    pub orders: Vec<PlannedOrder>,
}

/// A fresh run id: six hex digits, random so that runs against one shop never share ids.
pub fn run_id(rng: &mut impl Rng) -> String {
    format!("{:06x}", rng.gen::<u32>() & 0x00ff_ffff)
}

/// Plans `count` orders for run `run_id`; fails only if `run_id` makes invalid ids.
pub fn plan(run_id: &str, count: usize, rng: &mut impl Rng) -> Result<Plan, OpsError> {
    let skus: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|s| format!("demo-{run_id}-{s}"))
        .collect();
    let scarce = format!("demo-{run_id}-rare");
    let mut scenarios: Vec<Scenario> = (0..count).map(|i| MIX[i % MIX.len()]).collect();
    scenarios.shuffle(rng);
    let mut demand = vec![0u32; skus.len()];
    let orders = scenarios
        .into_iter()
        .enumerate()
        .map(|(n, scenario)| {
            let order_id = format!("demo-{run_id}-{}", n + 1);
            let lines = match scenario {
                Scenario::OutOfStock => vec![line(&scarce, i64::from(SCARCE_STOCK) + 1, rng)],
                _ => {
                    let mut picked: Vec<usize> = (0..skus.len()).collect();
                    picked.shuffle(rng);
                    picked.truncate(rng.gen_range(1..=2));
                    picked
                        .into_iter()
                        .map(|i| {
                            let quantity = rng.gen_range(1..=3);
                            if scenario != Scenario::Invalid {
                                demand[i] += quantity;
                            }
                            line(&skus[i], i64::from(quantity), rng)
                        })
                        .collect()
                }
            };
            let token = match scenario {
                Scenario::Declined => DECLINED_CARDS[n % DECLINED_CARDS.len()],
                _ => GOOD_CARDS[n % GOOD_CARDS.len()],
            };
            let mut order = placed(&order_id, n, lines, token)?;
            if scenario == Scenario::Invalid {
                break_rules(&mut order, n);
            }
            Ok(PlannedOrder {
                order_id,
                scenario,
                order,
            })
        })
        .collect::<Result<Vec<_>, OpsError>>()?;
    // Every order that may reserve fits at once, so only the scarce sku runs short.
    let mut stock: Vec<(String, u32)> = skus
        .into_iter()
        .zip(demand)
        .map(|(sku, d)| (sku, d + 2))
        .collect();
    stock.push((scarce, SCARCE_STOCK));
    Ok(Plan {
        run_id: run_id.to_owned(),
        stock,
        orders,
    })
}

fn line(sku: &str, quantity: i64, rng: &mut impl Rng) -> OrderLineInput {
    OrderLineInput {
        sku: sku.to_owned(),
        quantity,
        unit_price: PRICES[rng.gen_range(0..PRICES.len())],
    }
}

fn placed(
    order_id: &str,
    n: usize,
    lines: Vec<OrderLineInput>,
    token: &str,
) -> Result<OrderPlaced, OpsError> {
    let total = lines.iter().map(|l| l.quantity * l.unit_price).sum();
    Ok(OrderPlaced {
        order_id: OrderId::parse(order_id)
            .map_err(|e| OpsError::InvalidOptions(format!("run id: {e}")))?,
        customer_id: format!("demo-customer-{}", n % 7),
        currency: "EUR".to_owned(),
        lines,
        total,
        payment_token: token.to_owned(),
    })
}

/// Breaks one or more rules, differently from order to order, so the 400s list varied problems.
fn break_rules(order: &mut OrderPlaced, n: usize) {
    match n % 3 {
        0 => {
            if let Some(first) = order.lines.first_mut() {
                first.quantity = 0;
            }
            order.total += 1;
        }
        1 => {
            order.payment_token.clear();
            if let Some(first) = order.lines.first_mut() {
                first.unit_price = -first.unit_price;
            }
        }
        _ => {
            order.lines.clear();
            order.currency = "euro".to_owned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn every_scenario_is_planned_and_only_invalid_orders_break_the_rules() {
        let plan = plan("abc123", 40, &mut StdRng::seed_from_u64(7)).expect("valid run id");
        assert_eq!(plan.orders.len(), 40);
        for scenario in MIX {
            assert!(
                plan.orders.iter().any(|o| o.scenario == scenario),
                "{scenario:?}"
            );
        }
        for order in &plan.orders {
            let valid = order.order.validate().is_ok();
            assert_eq!(valid, order.scenario != Scenario::Invalid, "{order:?}");
        }
    }

    #[test]
    fn stock_covers_every_order_except_those_meant_to_run_short() {
        let plan = plan("abc123", 60, &mut StdRng::seed_from_u64(11)).expect("valid run id");
        for (sku, units) in &plan.stock {
            let wanted: i64 = plan
                .orders
                .iter()
                .filter(|o| o.scenario != Scenario::Invalid)
                .flat_map(|o| &o.order.lines)
                .filter(|l| &l.sku == sku)
                .map(|l| l.quantity)
                .sum();
            let short = plan
                .orders
                .iter()
                .filter(|o| o.order.lines.iter().any(|l| &l.sku == sku))
                .all(|o| o.scenario == Scenario::OutOfStock);
            assert_eq!(short, wanted > i64::from(*units), "{sku}");
        }
    }
}
