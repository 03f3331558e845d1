//! The simulator's books: one entry per idempotency key (the order id) in a sled tree,
//! durable before any answer leaves, because a real gateway's books survive its
//! clients' crashes. Audits compare these books with the PAYMENTS stream, so a double
//! charge at the gateway cannot hide.
//!
//! Durability is a group commit: every call waits until everything written before its
//! answer is flushed, and one flush serves all the calls that queued behind it, so
//! thirty-two calls in flight cost one fsync, not thirty-two.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use shop_events::{Currency, Money, OrderId, PaymentId};

use crate::api::{LedgerEntry, LedgerStatus};
use crate::GatewaySimError;

/// The token table: Stripe's test tokens, and what each comes to.
pub fn outcome_for_token(source: &str) -> Result<(), &'static str> {
    match source {
        "tok_visa" | "tok_mastercard" => Ok(()),
        "tok_chargeDeclined" => Err("card_declined"),
        "tok_chargeDeclinedInsufficientFunds" => Err("insufficient_funds"),
        _ => Err("invalid_token"),
    }
}

/// What a charge call came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeResult {
    /// The key's entry after this call: captured, declined or voided.
    Recorded(LedgerEntry),
    /// The key was charged before with another amount or currency; nothing changed.
    KeyReused(LedgerEntry),
}

/// Why a refund was refused; the books did not change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundRefusal {
    /// No call was ever made under this key.
    NoSuchKey,
    /// The key's charge is not the one named, or the key was never captured.
    ChargeMismatch {
        status: LedgerStatus,
    },
    CurrencyMismatch {
        charged: Option<Currency>,
    },
    AmountTooLarge {
        charged: Money,
    },
}

/// The books.
pub struct Ledger {
    db: sled::Db,
    entries: sled::Tree,
    /// Read-modify-write of one entry happens under this lock, so two calls racing
    /// on one key (two payment instances, say) cannot both charge.
    write: Mutex<()>,
    /// How many writes were made; a flush that started after write `n` covers it.
    written: AtomicU64,
    /// The highest write known durable; holding the lock is the right to flush.
    durable: tokio::sync::Mutex<u64>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("written", &self.written.load(Ordering::Relaxed))
            .finish()
    }
}

impl Ledger {
    /// Opens (or creates) the books in `dir`.
    pub fn open(dir: &Path) -> Result<Ledger, GatewaySimError> {
        // A small cache: each entry is written once per call and read back only on retries.
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(16 * 1024 * 1024)
            .open()
            .map_err(|source| GatewaySimError::Open {
                dir: dir.to_path_buf(),
                source,
            })?;
        let entries = db.open_tree("ledger")?;
        Ok(Ledger {
            db,
            entries,
            write: Mutex::new(()),
            written: AtomicU64::new(0),
            durable: tokio::sync::Mutex::new(0),
        })
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> Result<Vec<LedgerEntry>, GatewaySimError> {
        self.entries
            .iter()
            .map(|item| {
                let (key, value) = item?;
                decode(&key, &value)
            })
            .collect()
    }

    /// One key's entry.
    pub fn entry(&self, key: &OrderId) -> Result<Option<LedgerEntry>, GatewaySimError> {
        self.entries
            .get(key.as_str())?
            .map(|value| decode(key.as_str().as_bytes(), &value))
            .transpose()
    }

    /// Charges once per key: the first call decides by the token, repeats count and answer the same.
    pub async fn charge(
        &self,
        key: &OrderId,
        amount: Money,
        currency: Currency,
        source: &str,
    ) -> Result<ChargeResult, GatewaySimError> {
        let result = self.modify(key, |existing| match existing {
            Some(entry) if reused_with_other_terms(&entry, amount, currency) => {
                Ok((ChargeResult::KeyReused(entry), None))
            }
            Some(mut entry) => {
                entry.charge_calls += 1;
                Ok((ChargeResult::Recorded(entry.clone()), Some(entry)))
            }
            None => {
                let entry = LedgerEntry {
                    order_id: key.clone(),
                    status: first_charge(source)?,
                    amount,
                    currency: Some(currency),
                    charge_calls: 1,
                    refunded: Money::ZERO,
                    refund_calls: 0,
                };
                Ok((ChargeResult::Recorded(entry.clone()), Some(entry)))
            }
        })?;
        self.make_durable().await?;
        Ok(result)
    }

    /// Voids a key that has no charge yet; answers the key's status either way.
    pub async fn void(&self, key: &OrderId) -> Result<LedgerStatus, GatewaySimError> {
        let status = self.modify(key, |existing| match existing {
            Some(entry) => Ok((entry.status, None)),
            None => {
                let entry = LedgerEntry {
                    order_id: key.clone(),
                    status: LedgerStatus::Voided,
                    amount: Money::ZERO,
                    currency: None,
                    charge_calls: 0,
                    refunded: Money::ZERO,
                    refund_calls: 0,
                };
                Ok((LedgerStatus::Voided, Some(entry)))
            }
        })?;
        self.make_durable().await?;
        Ok(status)
    }

    /// Refunds the key's charge once; repeats count and change nothing.
    pub async fn refund(
        &self,
        key: &OrderId,
        charge: &PaymentId,
        amount: Money,
        currency: Currency,
    ) -> Result<Result<LedgerEntry, RefundRefusal>, GatewaySimError> {
        let result = self.modify(key, |existing| {
            let Some(mut entry) = existing else {
                return Ok((Err(RefundRefusal::NoSuchKey), None));
            };
            if !matches!(&entry.status, LedgerStatus::Captured { payment_id } if payment_id == charge)
            {
                let status = entry.status;
                return Ok((Err(RefundRefusal::ChargeMismatch { status }), None));
            }
            if entry.currency != Some(currency) {
                let charged = entry.currency;
                return Ok((Err(RefundRefusal::CurrencyMismatch { charged }), None));
            }
            if amount > entry.amount {
                let charged = entry.amount;
                return Ok((Err(RefundRefusal::AmountTooLarge { charged }), None));
            }
            entry.refund_calls += 1;
            // Idempotent: the first refund gives the money back, repeats change nothing.
            if entry.refund_calls == 1 {
                entry.refunded = amount;
            }
            Ok((Ok(entry.clone()), Some(entry)))
        })?;
        self.make_durable().await?;
        Ok(result)
    }

    /// Reads a key's entry, decides, and writes the new entry (if any) under the write lock.
    fn modify<T>(
        &self,
        key: &OrderId,
        decide: impl FnOnce(Option<LedgerEntry>) -> Result<(T, Option<LedgerEntry>), GatewaySimError>,
    ) -> Result<T, GatewaySimError> {
        // A poisoned lock only means another call panicked mid-way; sled's own state is
        // consistent, so carry on rather than refuse every later call.
        let _guard = self
            .write
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (answer, write) = decide(self.entry(key)?)?;
        if let Some(entry) = write {
            let bytes = serde_json::to_vec(&entry).map_err(GatewaySimError::Encode)?;
            self.entries.insert(key.as_str(), bytes)?;
            self.written.fetch_add(1, Ordering::SeqCst);
        }
        Ok(answer)
    }

    /// Returns once every write made so far is on disk.
    pub async fn make_durable(&self) -> Result<(), GatewaySimError> {
        let target = self.written.load(Ordering::SeqCst);
        let mut durable = self.durable.lock().await;
        if *durable >= target {
            // A flush that started after our write finished while we queued.
            return Ok(());
        }
        // Everything written by now rides on this flush, including calls queued behind us.
        let covered = self.written.load(Ordering::SeqCst);
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(GatewaySimError::FlushTask)??;
        *durable = covered;
        Ok(())
    }

    /// Flushes whatever is left, for a graceful stop.
    pub fn flush(&self) -> Result<(), GatewaySimError> {
        self.db.flush()?;
        Ok(())
    }
}

fn decode(key: &[u8], value: &[u8]) -> Result<LedgerEntry, GatewaySimError> {
    serde_json::from_slice(value).map_err(|source| GatewaySimError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

/// Stripe refuses a key used again with other parameters; a voided key has none to compare.
fn reused_with_other_terms(entry: &LedgerEntry, amount: Money, currency: Currency) -> bool {
    match entry.currency {
        Some(charged) => entry.amount != amount || charged != currency,
        None => false,
    }
}

fn first_charge(source: &str) -> Result<LedgerStatus, GatewaySimError> {
    Ok(match outcome_for_token(source) {
        Ok(()) => LedgerStatus::Captured {
            payment_id: PaymentId::parse(format!("pay_{}", uuid::Uuid::now_v7().simple()))
                .map_err(GatewaySimError::PaymentId)?,
        },
        Err(reason) => LedgerStatus::Declined {
            reason: reason.to_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> OrderId {
        OrderId::parse(id).expect("a valid order id")
    }

    fn eur() -> Currency {
        Currency::parse("EUR").expect("EUR")
    }

    fn open() -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().expect("temp dir");
        let ledger = Ledger::open(&dir.path().join("ledger")).expect("open the ledger");
        (dir, ledger)
    }

    fn captured(result: ChargeResult) -> PaymentId {
        match result {
            ChargeResult::Recorded(LedgerEntry {
                status: LedgerStatus::Captured { payment_id },
                ..
            }) => payment_id,
            other => panic!("expected a capture, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn charging_a_key_twice_charges_once_and_answers_the_same() {
        let (_dir, ledger) = open();
        let first = captured(
            ledger
                .charge(&key("o1"), Money(1250), eur(), "tok_visa")
                .await
                .expect("charge"),
        );
        let again = captured(
            ledger
                .charge(&key("o1"), Money(1250), eur(), "tok_visa")
                .await
                .expect("charge"),
        );
        assert_eq!(first, again);
        let entries = ledger.entries().expect("entries");
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].charge_calls, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_charges_on_one_key_charge_once() {
        let (_dir, ledger) = open();
        let ledger = std::sync::Arc::new(ledger);
        let calls = (0..16).map(|_| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                ledger
                    .charge(&key("race"), Money(10), eur(), "tok_visa")
                    .await
                    .map(captured)
            })
        });
        let mut ids = std::collections::BTreeSet::new();
        for call in await_all(calls).await {
            ids.insert(call.expect("the task ran").expect("charge"));
        }
        assert_eq!(ids.len(), 1, "one payment id for the key: {ids:?}");
        let entry = ledger.entry(&key("race")).expect("read").expect("entry");
        assert_eq!(entry.charge_calls, 16);
    }

    async fn await_all<T>(
        handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
    ) -> Vec<Result<T, tokio::task::JoinError>> {
        let mut results = Vec::new();
        for handle in handles.collect::<Vec<_>>() {
            results.push(handle.await);
        }
        results
    }

    #[tokio::test]
    async fn a_declined_key_stays_declined_even_with_a_good_card() {
        let (_dir, ledger) = open();
        ledger
            .charge(&key("o2"), Money(5), eur(), "tok_chargeDeclined")
            .await
            .expect("charge");
        let again = ledger
            .charge(&key("o2"), Money(5), eur(), "tok_visa")
            .await
            .expect("charge");
        assert!(matches!(
            again,
            ChargeResult::Recorded(LedgerEntry { status: LedgerStatus::Declined { ref reason }, .. }) if reason == "card_declined"
        ));
    }

    #[tokio::test]
    async fn a_key_reused_with_another_amount_is_refused_and_changes_nothing() {
        let (_dir, ledger) = open();
        ledger
            .charge(&key("o3"), Money(100), eur(), "tok_visa")
            .await
            .expect("charge");
        let reused = ledger
            .charge(&key("o3"), Money(999), eur(), "tok_visa")
            .await
            .expect("charge");
        assert!(matches!(reused, ChargeResult::KeyReused(_)));
        assert_eq!(
            ledger
                .entry(&key("o3"))
                .expect("read")
                .map(|e| e.charge_calls),
            Some(1)
        );
    }

    #[tokio::test]
    async fn a_void_before_the_charge_turns_the_charge_into_a_decline() {
        let (_dir, ledger) = open();
        assert_eq!(
            ledger.void(&key("o4")).await.expect("void"),
            LedgerStatus::Voided
        );
        let late = ledger
            .charge(&key("o4"), Money(100), eur(), "tok_visa")
            .await
            .expect("charge");
        assert!(matches!(
            late,
            ChargeResult::Recorded(LedgerEntry {
                status: LedgerStatus::Voided,
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_void_after_the_charge_reports_the_capture() {
        let (_dir, ledger) = open();
        let charged = captured(
            ledger
                .charge(&key("o5"), Money(100), eur(), "tok_visa")
                .await
                .expect("charge"),
        );
        assert_eq!(
            ledger.void(&key("o5")).await.expect("void"),
            LedgerStatus::Captured {
                payment_id: charged
            }
        );
    }

    #[tokio::test]
    async fn a_refund_gives_the_money_back_once() {
        let (_dir, ledger) = open();
        let charged = captured(
            ledger
                .charge(&key("o6"), Money(700), eur(), "tok_visa")
                .await
                .expect("charge"),
        );
        for _ in 0..2 {
            let entry = ledger
                .refund(&key("o6"), &charged, Money(700), eur())
                .await
                .expect("refund")
                .expect("accepted");
            assert_eq!(entry.refunded, Money(700));
        }
        let entry = ledger.entry(&key("o6")).expect("read").expect("entry");
        assert_eq!((entry.refunded, entry.refund_calls), (Money(700), 2));
    }

    #[tokio::test]
    async fn a_refund_of_another_charge_or_more_money_is_refused() {
        let (_dir, ledger) = open();
        let charged = captured(
            ledger
                .charge(&key("o7"), Money(700), eur(), "tok_visa")
                .await
                .expect("charge"),
        );
        let other = PaymentId::parse("pay_other").expect("id");
        let refused = ledger
            .refund(&key("o7"), &other, Money(700), eur())
            .await
            .expect("refund");
        assert!(matches!(refused, Err(RefundRefusal::ChargeMismatch { .. })));
        let refused = ledger
            .refund(&key("o7"), &charged, Money(701), eur())
            .await
            .expect("refund");
        assert_eq!(
            refused,
            Err(RefundRefusal::AmountTooLarge {
                charged: Money(700)
            })
        );
        let refused = ledger
            .refund(&key("nobody"), &charged, Money(1), eur())
            .await
            .expect("refund");
        assert_eq!(refused, Err(RefundRefusal::NoSuchKey));
    }

    #[tokio::test]
    async fn the_books_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ledger");
        let charged = {
            let ledger = Ledger::open(&path).expect("open");
            captured(
                ledger
                    .charge(&key("o8"), Money(42), eur(), "tok_mastercard")
                    .await
                    .expect("charge"),
            )
        };
        let ledger = Ledger::open(&path).expect("reopen");
        let entry = ledger.entry(&key("o8")).expect("read").expect("entry");
        assert_eq!(
            entry.status,
            LedgerStatus::Captured {
                payment_id: charged
            }
        );
    }

    #[test]
    fn the_token_table_follows_stripe() {
        assert_eq!(outcome_for_token("tok_visa"), Ok(()));
        assert_eq!(outcome_for_token("tok_mastercard"), Ok(()));
        assert_eq!(
            outcome_for_token("tok_chargeDeclined"),
            Err("card_declined")
        );
        assert_eq!(
            outcome_for_token("tok_chargeDeclinedInsufficientFunds"),
            Err("insufficient_funds")
        );
        assert_eq!(outcome_for_token("tok_nonsense"), Err("invalid_token"));
    }
}
