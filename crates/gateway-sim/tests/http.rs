//! The simulator over real HTTP: a server on 127.0.0.1 port 0 with its books in a temp dir.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use shop_gateway_sim::api::{
    self, Charge, ErrorBody, ErrorCode, ErrorKind, LedgerEntry, LedgerStatus, Refund, Void,
};
use shop_gateway_sim::{Simulator, SimulatorConfig};

struct World {
    _dir: tempfile::TempDir,
    sim: Simulator,
    http: Client<HttpConnector, Full<Bytes>>,
}

async fn world(config: SimulatorConfig) -> World {
    let dir = tempfile::tempdir().expect("temp dir");
    let sim = Simulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        &dir.path().join("ledger"),
        config,
    )
    .await
    .expect("start the simulator");
    World {
        _dir: dir,
        sim,
        http: Client::builder(TokioExecutor::new()).build_http(),
    }
}

async fn quiet() -> World {
    world(SimulatorConfig::default()).await
}

impl World {
    async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: &str,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.sim.url()))
            .header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header(api::IDEMPOTENCY_KEY, key);
        }
        let request = request
            .body(Full::new(Bytes::from(body.to_owned())))
            .expect("request");
        let response = self.http.request(request).await.expect("an answer");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let value = serde_json::from_slice(&bytes).expect("a JSON body");
        (status, value)
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(key), &body.to_string())
            .await
    }

    async fn charge(&self, key: &str, amount: i64, source: &str) -> (StatusCode, Value) {
        self.post(
            api::CHARGES,
            key,
            json!({"amount": amount, "currency": "EUR", "source": source}),
        )
        .await
    }

    async fn ledger(&self) -> Vec<LedgerEntry> {
        let (status, body) = self.call(Method::GET, api::LEDGER, None, "").await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_value(body).expect("ledger entries")
    }
}

fn error(body: Value) -> (ErrorKind, ErrorCode, Option<String>) {
    let body: ErrorBody = serde_json::from_value(body).expect("an error body");
    (body.error.kind, body.error.code, body.error.param)
}

#[tokio::test]
async fn charging_one_key_twice_charges_once_and_answers_the_same() {
    let w = quiet().await;
    let (status, first) = w.charge("order-1", 1250, "tok_visa").await;
    assert_eq!(status, StatusCode::OK);
    let (status, again) = w.charge("order-1", 1250, "tok_visa").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first, again);
    let charge: Charge = serde_json::from_value(first).expect("a charge");
    assert_eq!(charge.amount.minor_units(), 1250);
    let ledger = w.ledger().await;
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].charge_calls, 2);
    assert_eq!(
        ledger[0].status,
        LedgerStatus::Captured {
            payment_id: charge.id
        }
    );
}

#[tokio::test]
async fn decline_tokens_answer_402_with_their_card_error_code() {
    let w = quiet().await;
    for (key, token, code) in [
        ("d1", "tok_chargeDeclined", ErrorCode::CardDeclined),
        (
            "d2",
            "tok_chargeDeclinedInsufficientFunds",
            ErrorCode::InsufficientFunds,
        ),
        ("d3", "tok_made_up", ErrorCode::InvalidToken),
    ] {
        let (status, body) = w.charge(key, 500, token).await;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{token}");
        assert_eq!(error(body.clone()).0, ErrorKind::CardError);
        assert_eq!(error(body).1, code);
        // The same key keeps its decline, whatever card comes next.
        let (status, body) = w.charge(key, 500, "tok_visa").await;
        assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
        assert_eq!(error(body).1, code);
    }
}

#[tokio::test]
async fn a_void_before_the_charge_stops_it() {
    let w = quiet().await;
    let (status, body) = w.post(api::VOIDS, "v1", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_value::<Void>(body).expect("a void"),
        Void::Voided
    );
    let (status, body) = w.charge("v1", 100, "tok_visa").await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(error(body).1, ErrorCode::Voided);
    assert_eq!(w.ledger().await[0].status, LedgerStatus::Voided);
}

#[tokio::test]
async fn a_void_after_the_charge_names_the_charge_to_refund() {
    let w = quiet().await;
    let (_, body) = w.charge("v2", 100, "tok_visa").await;
    let charge: Charge = serde_json::from_value(body).expect("a charge");
    // An empty body is a void with no parameters, as `{}` is.
    let (status, body) = w.call(Method::POST, api::VOIDS, Some("v2"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_value::<Void>(body).expect("a void"),
        Void::AlreadyCaptured { charge: charge.id }
    );
    let (_, _) = w.charge("v3", 100, "tok_chargeDeclined").await;
    let (_, body) = w.post(api::VOIDS, "v3", json!({})).await;
    assert_eq!(
        serde_json::from_value::<Void>(body).expect("a void"),
        Void::AlreadyDeclined {
            code: "card_declined".into()
        }
    );
}

#[tokio::test]
async fn a_refund_gives_the_money_back_once() {
    let w = quiet().await;
    let (_, body) = w.charge("r1", 900, "tok_visa").await;
    let charge: Charge = serde_json::from_value(body).expect("a charge");
    let refund = json!({"charge": charge.id, "amount": 900, "currency": "EUR"});
    for _ in 0..2 {
        let (status, body) = w.post(api::REFUNDS, "r1", refund.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let answer: Refund = serde_json::from_value(body).expect("a refund");
        assert_eq!(answer.amount.minor_units(), 900);
    }
    let entry = &w.ledger().await[0];
    assert_eq!((entry.refunded.minor_units(), entry.refund_calls), (900, 2));
}

#[tokio::test]
async fn refunds_that_do_not_match_the_books_are_refused() {
    let w = quiet().await;
    let (_, body) = w.charge("r2", 900, "tok_visa").await;
    let charge: Charge = serde_json::from_value(body).expect("a charge");
    let cases = [
        (
            "r2",
            json!({"charge": "pay_other", "amount": 900, "currency": "EUR"}),
            StatusCode::CONFLICT,
            ErrorCode::ChargeMismatch,
        ),
        (
            "r2",
            json!({"charge": charge.id, "amount": 901, "currency": "EUR"}),
            StatusCode::BAD_REQUEST,
            ErrorCode::AmountTooLarge,
        ),
        (
            "r2",
            json!({"charge": charge.id, "amount": 900, "currency": "USD"}),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidCurrency,
        ),
        (
            "nobody",
            json!({"charge": charge.id, "amount": 1, "currency": "EUR"}),
            StatusCode::NOT_FOUND,
            ErrorCode::ResourceMissing,
        ),
    ];
    for (key, body, status, code) in cases {
        let (got, answer) = w.post(api::REFUNDS, key, body.clone()).await;
        assert_eq!((got, error(answer).1), (status, code), "{body}");
    }
    assert_eq!(w.ledger().await[0].refund_calls, 0);
}

#[tokio::test]
async fn a_key_reused_with_other_terms_is_an_idempotency_error() {
    let w = quiet().await;
    w.charge("k1", 100, "tok_visa").await;
    let (status, body) = w.charge("k1", 200, "tok_visa").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (kind, code, _) = error(body);
    assert_eq!(
        (kind, code),
        (ErrorKind::IdempotencyError, ErrorCode::IdempotencyKeyReused)
    );
}

#[tokio::test]
async fn malformed_requests_get_a_400_that_says_what_is_wrong() {
    let w = quiet().await;
    let good = json!({"amount": 100, "currency": "EUR", "source": "tok_visa"}).to_string();
    let cases: Vec<(Option<&str>, String, ErrorCode, Option<&str>)> = vec![
        (None, good.clone(), ErrorCode::MissingIdempotencyKey, None),
        (
            Some("not an order id"),
            good.clone(),
            ErrorCode::InvalidIdempotencyKey,
            None,
        ),
        (
            Some("m1"),
            "{\"amount\": 1".into(),
            ErrorCode::InvalidJson,
            None,
        ),
        (Some("m1"), "[1, 2]".into(), ErrorCode::InvalidJson, None),
        (
            Some("m1"),
            json!({"currency": "EUR", "source": "tok_visa"}).to_string(),
            ErrorCode::ParameterMissing,
            Some("amount"),
        ),
        (
            Some("m1"),
            json!({"amount": "100", "currency": "EUR", "source": "tok_visa"}).to_string(),
            ErrorCode::InvalidAmount,
            Some("amount"),
        ),
        (
            Some("m1"),
            json!({"amount": -1, "currency": "EUR", "source": "tok_visa"}).to_string(),
            ErrorCode::InvalidAmount,
            Some("amount"),
        ),
        (
            Some("m1"),
            json!({"amount": 1.5, "currency": "EUR", "source": "tok_visa"}).to_string(),
            ErrorCode::InvalidAmount,
            Some("amount"),
        ),
        (
            Some("m1"),
            json!({"amount": 100, "currency": "eur", "source": "tok_visa"}).to_string(),
            ErrorCode::InvalidCurrency,
            Some("currency"),
        ),
        (
            Some("m1"),
            json!({"amount": 100, "currency": "EUR", "source": "  "}).to_string(),
            ErrorCode::InvalidSource,
            Some("source"),
        ),
        (
            Some("m1"),
            json!({"amount": 100, "currency": "EUR", "source": "x".repeat(257)}).to_string(),
            ErrorCode::InvalidSource,
            Some("source"),
        ),
        (
            Some("m1"),
            json!({"amount": 100, "currency": "EUR", "source": "tok_visa", "capture": false})
                .to_string(),
            ErrorCode::UnknownParameter,
            Some("capture"),
        ),
    ];
    for (key, body, code, param) in cases {
        let (status, answer) = w.call(Method::POST, api::CHARGES, key, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (kind, got, got_param) = error(answer);
        assert_eq!(kind, ErrorKind::InvalidRequestError, "{body}");
        assert_eq!((got, got_param.as_deref()), (code, param), "{body}");
    }
    let (status, answer) = w
        .call(
            Method::POST,
            api::CHARGES,
            Some("m2"),
            &"x".repeat(api::MAX_BODY_BYTES + 1),
        )
        .await;
    assert_eq!(
        (status, error(answer).1),
        (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::BodyTooLarge)
    );
    let (status, answer) = w.post(api::VOIDS, "m3", json!({"reason": "why not"})).await;
    assert_eq!(
        (status, error(answer).1),
        (StatusCode::BAD_REQUEST, ErrorCode::UnknownParameter)
    );
    let (status, answer) = w
        .post(
            api::REFUNDS,
            "m4",
            json!({"charge": "pay x", "amount": 1, "currency": "EUR"}),
        )
        .await;
    assert_eq!(
        (status, error(answer).1),
        (StatusCode::BAD_REQUEST, ErrorCode::InvalidCharge)
    );
    assert!(
        w.ledger().await.is_empty(),
        "no malformed request touches the books"
    );
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_refused() {
    let w = quiet().await;
    let (status, answer) = w.call(Method::GET, "/v1/customers", None, "").await;
    assert_eq!(
        (status, error(answer).1),
        (StatusCode::NOT_FOUND, ErrorCode::ResourceMissing)
    );
    let (status, answer) = w.call(Method::GET, api::CHARGES, None, "").await;
    assert_eq!(
        (status, error(answer).1),
        (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed)
    );
    let (status, health) = w.call(Method::GET, api::HEALTHZ, None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
}

#[tokio::test]
async fn simulated_failures_are_503s_and_half_of_them_happen_after_the_charge() {
    let w = world(SimulatorConfig {
        latency: Duration::ZERO,
        failure_rate: 1.0,
    })
    .await;
    let calls = 60;
    for i in 0..calls {
        let (status, answer) = w.charge(&format!("f{i}"), 100, "tok_visa").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            error(answer),
            (ErrorKind::ApiError, ErrorCode::ServiceUnavailable, None)
        );
    }
    // Each failure is a coin toss between "before" and "after the effect": all 60 on
    // one side has odds of 2^-59.
    let recorded = w.ledger().await.len();
    assert!(
        recorded > 0 && recorded < calls,
        "{recorded} of {calls} charges happened"
    );
}

#[tokio::test]
async fn the_books_survive_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger");
    let first = Simulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        &ledger,
        SimulatorConfig::default(),
    )
    .await
    .expect("start");
    let w = World {
        _dir: tempfile::tempdir().expect("temp dir"),
        sim: first,
        http: Client::builder(TokioExecutor::new()).build_http(),
    };
    let (_, body) = w.charge("s1", 100, "tok_visa").await;
    let charge: Charge = serde_json::from_value(body).expect("a charge");
    w.sim.stop().await.expect("stop");
    let again = Simulator::start(
        "127.0.0.1:0".parse().expect("addr"),
        &ledger,
        SimulatorConfig::default(),
    )
    .await
    .expect("restart on the same books");
    let entries = again.ledger().expect("books");
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].status,
        LedgerStatus::Captured {
            payment_id: charge.id
        }
    );
}

#[tokio::test]
async fn the_health_check_counts_calls_and_their_high_water_mark() {
    let w = quiet().await;
    w.charge("h1", 1, "tok_visa").await;
    w.post(api::VOIDS, "h2", json!({})).await;
    let health = w.sim.health();
    assert_eq!(
        (health.calls, health.in_flight, health.max_in_flight),
        (2, 0, 1)
    );
}
