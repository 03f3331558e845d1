//! Payment's HTTP adapter against the real simulator on 127.0.0.1 port 0: what each
//! answer maps to, and how many calls it lets through at once.

use std::time::Duration;

use shop_events::{Currency, Money, OrderId, PaymentId};
use shop_gateway_sim::{Simulator, SimulatorConfig};
use shop_payment::gateway::{
    ChargeOutcome, HttpGateway, HttpGatewayConfig, LedgerStatus, PaymentGateway, VoidOutcome,
};
use shop_payment::PaymentError;

struct World {
    _dir: tempfile::TempDir,
    sim: Simulator,
}

async fn simulator(config: SimulatorConfig) -> World {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Simulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        &dir.path().join("ledger"),
        config,
    )
    .await
    .expect("start the simulator");
    World { _dir: dir, sim }
}

fn adapter(url: &str, concurrency: usize, timeout: Duration) -> HttpGateway {
    HttpGateway::new(&HttpGatewayConfig {
        url: url.to_owned(),
        concurrency,
        timeout,
    })
    .expect("a valid gateway URL")
}

impl World {
    fn gateway(&self) -> HttpGateway {
        adapter(&self.sim.url(), 8, Duration::from_secs(5))
    }
}

fn key(id: &str) -> OrderId {
    OrderId::parse(id).expect("order id")
}

fn eur() -> Currency {
    Currency::parse("EUR").expect("EUR")
}

#[tokio::test]
async fn a_charge_is_captured_once_and_repeats_get_the_same_payment_id() {
    let w = simulator(SimulatorConfig::default()).await;
    let gateway = w.gateway();
    let first = gateway
        .charge(&key("o1"), Money(1250), eur(), "tok_visa")
        .await
        .expect("charge");
    let again = gateway
        .charge(&key("o1"), Money(1250), eur(), "tok_visa")
        .await
        .expect("charge");
    assert!(matches!(first, ChargeOutcome::Captured { .. }));
    assert_eq!(first, again);
    let books = gateway.ledger().await.expect("the books");
    assert_eq!(books.len(), 1);
    assert_eq!(books[0].charge_calls, 2);
}

#[tokio::test]
async fn a_402_is_a_decline_with_the_card_error_code_as_its_reason() {
    let w = simulator(SimulatorConfig::default()).await;
    let gateway = w.gateway();
    for (order, token, reason) in [
        ("d1", "tok_chargeDeclined", "card_declined"),
        (
            "d2",
            "tok_chargeDeclinedInsufficientFunds",
            "insufficient_funds",
        ),
        ("d3", "tok_unheard_of", "invalid_token"),
    ] {
        let outcome = gateway
            .charge(&key(order), Money(10), eur(), token)
            .await
            .expect("a decline is an answer, not an error");
        assert_eq!(
            outcome,
            ChargeOutcome::Declined {
                reason: reason.into()
            }
        );
    }
}

#[tokio::test]
async fn voids_before_and_after_the_charge() {
    let w = simulator(SimulatorConfig::default()).await;
    let gateway = w.gateway();
    assert_eq!(
        gateway.void(&key("v1")).await.expect("void"),
        VoidOutcome::Voided
    );
    assert_eq!(
        gateway
            .charge(&key("v1"), Money(10), eur(), "tok_visa")
            .await
            .expect("charge"),
        ChargeOutcome::Declined {
            reason: "voided".into()
        }
    );
    let ChargeOutcome::Captured { payment_id } = gateway
        .charge(&key("v2"), Money(10), eur(), "tok_visa")
        .await
        .expect("charge")
    else {
        panic!("tok_visa is captured");
    };
    assert_eq!(
        gateway.void(&key("v2")).await.expect("void"),
        VoidOutcome::AlreadyCaptured { payment_id }
    );
}

#[tokio::test]
async fn a_refund_goes_through_once_however_often_it_is_asked() {
    let w = simulator(SimulatorConfig::default()).await;
    let gateway = w.gateway();
    let ChargeOutcome::Captured { payment_id } = gateway
        .charge(&key("r1"), Money(300), eur(), "tok_visa")
        .await
        .expect("charge")
    else {
        panic!("tok_visa is captured");
    };
    for _ in 0..3 {
        gateway
            .refund(&key("r1"), &payment_id, Money(300), eur())
            .await
            .expect("refund");
    }
    let books = gateway.ledger().await.expect("the books");
    assert_eq!(books[0].refunded, Money(300));
    assert_eq!(books[0].refund_calls, 3);
    assert_eq!(books[0].status, LedgerStatus::Captured { payment_id });
}

#[tokio::test]
async fn a_503_is_a_transient_failure() {
    let w = simulator(SimulatorConfig {
        latency: Duration::ZERO,
        failure_rate: 1.0,
    })
    .await;
    let error = w
        .gateway()
        .charge(&key("f1"), Money(10), eur(), "tok_visa")
        .await
        .expect_err("every call fails");
    assert!(
        matches!(error, PaymentError::GatewayFailed { status: 503, .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
}

#[tokio::test]
async fn a_slow_gateway_times_out_as_a_transient_failure() {
    let w = simulator(SimulatorConfig {
        latency: Duration::from_secs(2),
        failure_rate: 0.0,
    })
    .await;
    let gateway = adapter(&w.sim.url(), 4, Duration::from_millis(100));
    let error = gateway
        .charge(&key("t1"), Money(10), eur(), "tok_visa")
        .await
        .expect_err("the answer comes too late");
    assert!(
        matches!(error, PaymentError::GatewayTimeout { .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
}

#[tokio::test]
async fn a_gateway_that_is_not_there_is_a_transient_failure() {
    // A port that was free a moment ago and has nobody listening now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let gateway = adapter(&format!("http://{addr}"), 4, Duration::from_secs(2));
    let error = gateway.void(&key("n1")).await.expect_err("nobody answers");
    assert!(
        matches!(error, PaymentError::GatewayUnreachable { .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
}

#[tokio::test]
async fn a_4xx_other_than_402_is_our_bug_and_still_retried() {
    let w = simulator(SimulatorConfig::default()).await;
    let gateway = w.gateway();
    gateway
        .charge(&key("b1"), Money(10), eur(), "tok_visa")
        .await
        .expect("charge");
    // The same key with another amount: the gateway refuses it as an idempotency error.
    let error = gateway
        .charge(&key("b1"), Money(11), eur(), "tok_visa")
        .await
        .expect_err("a reused key");
    assert!(
        matches!(error, PaymentError::GatewayRejected { status: 400, .. }),
        "{error:?}"
    );
    assert!(error.is_transient());
    // A refund of a charge that is not the key's: 409.
    let error = gateway
        .refund(
            &key("b1"),
            &PaymentId::parse("pay_someone_else").expect("id"),
            Money(10),
            eur(),
        )
        .await
        .expect_err("not this key's charge");
    assert!(
        matches!(error, PaymentError::GatewayRejected { status: 409, .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn a_gateway_without_a_ledger_endpoint_says_so() {
    let w = simulator(SimulatorConfig::default()).await;
    // Under a path prefix the simulator does not serve, every route is a 404, as
    // `GET /v1/ledger` is at a real provider.
    let gateway = adapter(
        &format!("{}/provider", w.sim.url()),
        4,
        Duration::from_secs(2),
    );
    let error = gateway.ledger().await.expect_err("no books offered");
    assert!(
        matches!(error, PaymentError::LedgerNotOffered { .. }),
        "{error:?}"
    );
    assert!(!error.is_transient());
}

#[tokio::test]
async fn no_more_calls_than_the_cap_are_in_flight_at_once() {
    let w = simulator(SimulatorConfig {
        latency: Duration::from_millis(50),
        failure_rate: 0.0,
    })
    .await;
    let cap = 4;
    let gateway = adapter(&w.sim.url(), cap, Duration::from_secs(10));
    let calls = (0..40).map(|i| {
        let gateway = gateway.clone();
        async move {
            gateway
                .charge(&key(&format!("c{i}")), Money(1), eur(), "tok_visa")
                .await
        }
    });
    for outcome in futures::future::join_all(calls).await {
        assert!(matches!(outcome, Ok(ChargeOutcome::Captured { .. })));
    }
    let health = w.sim.health();
    assert_eq!(health.calls, 40);
    assert!(
        health.max_in_flight as usize <= cap,
        "{} calls were in flight at once, the cap is {cap}",
        health.max_in_flight
    );
    assert!(
        health.max_in_flight > 1,
        "the calls ran one at a time: {health:?}"
    );
}

#[test]
fn only_plain_http_urls_are_accepted() {
    for url in ["https://pay.example", "127.0.0.1:4280", "not a url", ""] {
        let error = HttpGateway::new(&HttpGatewayConfig {
            url: url.into(),
            concurrency: 1,
            timeout: Duration::from_secs(1),
        })
        .expect_err(url);
        assert!(
            matches!(error, PaymentError::GatewayUrl { .. }),
            "{url}: {error:?}"
        );
        assert!(!error.is_transient());
    }
}
