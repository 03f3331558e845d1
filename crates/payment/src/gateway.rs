//! The payment gateway port and its simulator with Stripe-style test tokens.
//!
//! Every call is idempotent by the order id, as a real gateway's idempotency
//! key: charging twice for one order returns the first result instead of
//! charging again, refunds likewise. The simulator keeps its own ledger in a
//! separate sled database, flushed before it answers, because a real gateway's
//! books survive our crashes: that ledger is what audits compare the PAYMENTS
//! stream against, so a double charge at the gateway cannot hide.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use shop_events::{Currency, Money, OrderId, PaymentId};

use crate::PaymentError;

/// Crash point (`SHOP_CRASHPOINT`, see `shop_runtime::crashpoint`): the gateway charged and
/// its books are durable, the answer is not recorded yet. A restart charges again under the
/// same idempotency key and gets the first answer back.
pub const AFTER_GATEWAY_CHARGE_BEFORE_RECORD: &str = "after_gateway_charge_before_record";

/// What a charge came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Captured { payment_id: PaymentId },
    Declined { reason: String },
}

/// What voiding an idempotency key came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoidOutcome {
    /// No charge was made, and none will be under this key.
    Voided,
    /// A charge had already been made; it must be refunded.
    AlreadyCaptured { payment_id: PaymentId },
    /// The key had been declined; nothing to undo.
    AlreadyDeclined { reason: String },
}

/// A failure worth retrying (timeouts, 5xx); business answers are outcomes, not errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gateway unavailable: {0}")]
pub struct Transient(pub String);

/// The port the payment service charges through.
pub trait PaymentGateway: Send + Sync + 'static {
    fn charge(
        &self,
        key: &OrderId,
        amount: Money,
        currency: Currency,
        token: &str,
    ) -> impl Future<Output = Result<ChargeOutcome, Transient>> + Send;

    fn void(&self, key: &OrderId) -> impl Future<Output = Result<VoidOutcome, Transient>> + Send;

    fn refund(
        &self,
        key: &OrderId,
        payment_id: &PaymentId,
        amount: Money,
    ) -> impl Future<Output = Result<(), Transient>> + Send;

    /// Makes every answer given so far durable at the gateway; a remote gateway already
    /// is, the simulator flushes its books here (once per batch of calls).
    fn make_durable(&self) -> Result<(), Transient> {
        Ok(())
    }
}

pub use shop_events::api::payment::{LedgerEntry, LedgerStatus};

/// Simulator settings: `SHOP_GATEWAY_LATENCY` and `SHOP_GATEWAY_FAILURE_RATE`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimulatorConfig {
    pub latency: Duration,
    /// Share of calls that fail transiently; half of those fail after the effect
    /// happened (the answer was lost), which is the case idempotency exists for.
    pub failure_rate: f64,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            latency: Duration::ZERO,
            failure_rate: 0.0,
        }
    }
}

/// The simulated gateway.
#[derive(Clone)]
pub struct SimulatedGateway {
    db: sled::Db,
    ledger: sled::Tree,
    config: SimulatorConfig,
}

impl std::fmt::Debug for SimulatedGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedGateway")
            .field("config", &self.config)
            .finish()
    }
}

/// The token table of the simulator.
pub fn outcome_for_token(token: &str) -> Result<(), &'static str> {
    match token {
        "tok_visa" | "tok_mastercard" => Ok(()),
        "tok_chargeDeclined" => Err("card_declined"),
        "tok_chargeDeclinedInsufficientFunds" => Err("insufficient_funds"),
        _ => Err("invalid_token"),
    }
}

enum Fault {
    None,
    Before,
    After,
}

impl SimulatedGateway {
    pub fn open(dir: &Path, config: SimulatorConfig) -> Result<SimulatedGateway, PaymentError> {
        // A small cache: the ledger is written once per call and read back only on retries.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(16 * 1024 * 1024)
            .open()?;
        let ledger = db.open_tree("ledger")?;
        Ok(SimulatedGateway { db, ledger, config })
    }

    /// Every entry of the books, for audits.
    pub fn ledger(&self) -> Result<Vec<LedgerEntry>, PaymentError> {
        self.ledger
            .iter()
            .values()
            .map(|v| {
                let v = v?;
                serde_json::from_slice(&v).map_err(|e| PaymentError::Corrupt(e.to_string()))
            })
            .collect()
    }

    async fn call_delay(&self) -> Fault {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        let p = self.config.failure_rate;
        if p <= 0.0 {
            return Fault::None;
        }
        let roll = rand::random::<f64>();
        if roll < p / 2.0 {
            Fault::Before
        } else if roll < p {
            Fault::After
        } else {
            Fault::None
        }
    }

    fn read(&self, key: &OrderId) -> Result<Option<LedgerEntry>, Transient> {
        match self.ledger.get(key.as_str()) {
            Ok(None) => Ok(None),
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Transient(format!("ledger corrupt: {e}"))),
            Err(e) => Err(Transient(e.to_string())),
        }
    }

    fn write(&self, entry: &LedgerEntry) -> Result<(), Transient> {
        let bytes = serde_json::to_vec(entry).map_err(|e| Transient(e.to_string()))?;
        self.ledger
            .insert(entry.order_id.as_str(), bytes)
            .map_err(|e| Transient(e.to_string()))?;
        Ok(())
    }
}

fn charge_outcome(status: &LedgerStatus) -> ChargeOutcome {
    match status {
        LedgerStatus::Captured { payment_id } => ChargeOutcome::Captured {
            payment_id: payment_id.clone(),
        },
        LedgerStatus::Declined { reason } => ChargeOutcome::Declined {
            reason: reason.clone(),
        },
        LedgerStatus::Voided => ChargeOutcome::Declined {
            reason: "voided".to_owned(),
        },
    }
}

impl PaymentGateway for SimulatedGateway {
    /// The worker calls this once per sweep, before it records any answer: a real
    /// gateway's books are durable before its answer counts, and one flush per sweep
    /// instead of per call keeps the simulator from dominating the CPU.
    fn make_durable(&self) -> Result<(), Transient> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| Transient(e.to_string()))
    }

    async fn charge(
        &self,
        key: &OrderId,
        amount: Money,
        currency: Currency,
        token: &str,
    ) -> Result<ChargeOutcome, Transient> {
        let fault = self.call_delay().await;
        if let Fault::Before = fault {
            return Err(Transient("simulated timeout before the charge".into()));
        }
        let entry = match self.read(key)? {
            Some(mut existing) => {
                existing.charge_calls += 1;
                existing
            }
            None => {
                let status = match outcome_for_token(token) {
                    Ok(()) => LedgerStatus::Captured {
                        payment_id: PaymentId::parse(format!(
                            "pay_{}",
                            uuid::Uuid::now_v7().simple()
                        ))
                        .map_err(|e| Transient(e.to_string()))?,
                    },
                    Err(reason) => LedgerStatus::Declined {
                        reason: reason.to_owned(),
                    },
                };
                LedgerEntry {
                    order_id: key.clone(),
                    status,
                    amount,
                    currency: Some(currency),
                    charge_calls: 1,
                    refunded: Money::ZERO,
                    refund_calls: 0,
                }
            }
        };
        self.write(&entry)?;
        if let Fault::After = fault {
            return Err(Transient("simulated lost answer after the charge".into()));
        }
        Ok(charge_outcome(&entry.status))
    }

    async fn void(&self, key: &OrderId) -> Result<VoidOutcome, Transient> {
        if let Fault::Before = self.call_delay().await {
            return Err(Transient("simulated timeout before the void".into()));
        }
        match self.read(key)? {
            Some(entry) => Ok(match entry.status {
                LedgerStatus::Captured { payment_id } => {
                    VoidOutcome::AlreadyCaptured { payment_id }
                }
                LedgerStatus::Declined { reason } => VoidOutcome::AlreadyDeclined { reason },
                LedgerStatus::Voided => VoidOutcome::Voided,
            }),
            None => {
                self.write(&LedgerEntry {
                    order_id: key.clone(),
                    status: LedgerStatus::Voided,
                    amount: Money::ZERO,
                    currency: None,
                    charge_calls: 0,
                    refunded: Money::ZERO,
                    refund_calls: 0,
                })?;
                Ok(VoidOutcome::Voided)
            }
        }
    }

    async fn refund(
        &self,
        key: &OrderId,
        payment_id: &PaymentId,
        amount: Money,
    ) -> Result<(), Transient> {
        let fault = self.call_delay().await;
        if let Fault::Before = fault {
            return Err(Transient("simulated timeout before the refund".into()));
        }
        let Some(mut entry) = self.read(key)? else {
            return Err(Transient(format!("no charge under key {key} to refund")));
        };
        match &entry.status {
            LedgerStatus::Captured {
                payment_id: charged,
            } if charged == payment_id => {}
            other => {
                return Err(Transient(format!(
                    "refund of {payment_id} does not match the books for {key}: {other:?}"
                )))
            }
        }
        entry.refund_calls += 1;
        // Idempotent: the first refund gives the money back, repeats change nothing.
        if entry.refunded == Money::ZERO {
            entry.refunded = amount;
        }
        self.write(&entry)?;
        if let Fault::After = fault {
            return Err(Transient("simulated lost answer after the refund".into()));
        }
        Ok(())
    }
}
