//! The HTTP side: routes, input validation, simulated latency and faults, and the
//! server loop. The only place bytes turn into requests and answers into bytes.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Map, Value};
use shop_events::{Currency, Money, OrderId, PaymentId};
use tokio::net::TcpListener;

use crate::api::{
    self, ApiError, Charge, ErrorBody, ErrorCode, ErrorKind, Health, LedgerEntry, LedgerStatus,
    Refund, Serving, Succeeded, Void,
};
use crate::config::SimulatorConfig;
use crate::ledger::{ChargeResult, Ledger, RefundRefusal};
use crate::GatewaySimError;

/// How long a graceful stop waits for calls in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = Response<Full<Bytes>>;

/// The simulated provider: its books, its behaviour, and how busy it is.
#[derive(Debug)]
pub struct Gateway {
    ledger: Ledger,
    config: SimulatorConfig,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    calls: AtomicU64,
}

impl Gateway {
    pub fn new(ledger: Ledger, config: SimulatorConfig) -> Gateway {
        Gateway {
            ledger,
            config,
            in_flight: AtomicU64::new(0),
            max_in_flight: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub fn health(&self) -> Health {
        Health {
            status: Serving::Ok,
            in_flight: self.in_flight.load(Ordering::SeqCst),
            max_in_flight: self.max_in_flight.load(Ordering::SeqCst),
            calls: self.calls.load(Ordering::SeqCst),
        }
    }

    /// Counts a call in flight until the guard drops, keeping the high-water mark.
    fn enter(&self) -> InFlight<'_> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(&self.in_flight)
    }

    /// Waits the configured latency, then rolls for a simulated fault.
    async fn delay_and_roll(&self) -> Fault {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        let p = self.config.failure_rate;
        if p <= 0.0 {
            return Fault::None;
        }
        let roll = rand::random::<f64>();
        if roll < p / 2.0 {
            Fault::BeforeEffect
        } else if roll < p {
            Fault::AnswerLost
        } else {
            Fault::None
        }
    }
}

struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// The call fails before it touches the books.
    BeforeEffect,
    /// The books change, then the answer is lost: the client must retry under the same key.
    AnswerLost,
}

/// Serves `gateway` on `listener` until `shutdown` resolves, then lets calls in flight
/// finish and flushes the books.
pub async fn run(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewaySimError> {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(e) => {
                        // Out of file descriptors, say: the next accept may work.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let gateway = gateway.clone();
                let service = service_fn(move |request| {
                    let gateway = gateway.clone();
                    async move { Ok::<_, Infallible>(handle(&gateway, request).await) }
                });
                let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "gateway connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("gateway calls still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
    gateway.ledger.flush()
}

/// Answers one request.
pub async fn handle(gateway: &Gateway, request: Request<Incoming>) -> Reply {
    let (parts, body) = request.into_parts();
    let answer = match (&parts.method, parts.uri.path()) {
        (&Method::POST, api::CHARGES) => {
            let _call = gateway.enter();
            charge(gateway, &parts.headers, body).await
        }
        (&Method::POST, api::VOIDS) => {
            let _call = gateway.enter();
            void(gateway, &parts.headers, body).await
        }
        (&Method::POST, api::REFUNDS) => {
            let _call = gateway.enter();
            refund(gateway, &parts.headers, body).await
        }
        (&Method::GET, api::LEDGER) => match gateway.ledger.entries() {
            Ok(entries) => Ok(json(StatusCode::OK, &entries)),
            Err(e) => Err(Rejection::storage(e)),
        },
        (&Method::GET, api::HEALTHZ) => Ok(json(StatusCode::OK, &gateway.health())),
        (_, api::CHARGES | api::VOIDS | api::REFUNDS | api::LEDGER | api::HEALTHZ) => {
            Err(Rejection::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorKind::InvalidRequestError,
                ErrorCode::MethodNotAllowed,
                format!("{} is not allowed on {}", parts.method, parts.uri.path()),
            ))
        }
        (method, path) => Err(Rejection::new(
            StatusCode::NOT_FOUND,
            ErrorKind::InvalidRequestError,
            ErrorCode::ResourceMissing,
            format!(
                "no route {method} {path}; the routes are POST {}, POST {}, POST {}, GET {} and GET {}",
                api::CHARGES,
                api::VOIDS,
                api::REFUNDS,
                api::LEDGER,
                api::HEALTHZ
            ),
        )),
    };
    answer.unwrap_or_else(Rejection::into_reply)
}

async fn charge(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Reply, Rejection> {
    let key = idempotency_key(headers)?;
    let mut params = Params::read(body, &["amount", "currency", "source"]).await?;
    let amount = params.amount("amount")?;
    let currency = params.currency("currency")?;
    let source = params.source("source")?;
    let fault = gateway.delay_and_roll().await;
    if fault == Fault::BeforeEffect {
        return Err(Rejection::unavailable("simulated outage before the charge"));
    }
    let result = gateway
        .ledger
        .charge(&key, amount, currency, &source)
        .await
        .map_err(Rejection::storage)?;
    if fault == Fault::AnswerLost {
        return Err(Rejection::unavailable(
            "simulated lost answer: the charge was processed; retry with the same Idempotency-Key",
        ));
    }
    match result {
        ChargeResult::Recorded(entry) => charge_answer(&entry),
        ChargeResult::KeyReused(entry) => Err(Rejection::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::IdempotencyError,
            ErrorCode::IdempotencyKeyReused,
            format!(
                "Idempotency-Key `{key}` was first used to charge {} {}; this request asks for {amount} {currency}",
                entry.amount,
                entry.currency.map(|c| c.to_string()).unwrap_or_default(),
            ),
        )),
    }
}

/// A recorded charge as the client sees it: 200 for a capture, 402 for a decline.
fn charge_answer(entry: &LedgerEntry) -> Result<Reply, Rejection> {
    match &entry.status {
        LedgerStatus::Captured { payment_id } => match entry.currency {
            Some(currency) => Ok(json(
                StatusCode::OK,
                &Charge {
                    id: payment_id.clone(),
                    status: Succeeded::Succeeded,
                    amount: entry.amount,
                    currency,
                },
            )),
            None => Err(Rejection::storage(format!(
                "ledger entry for `{}` is captured without a currency",
                entry.order_id
            ))),
        },
        LedgerStatus::Declined { reason } => Err(Rejection::declined(reason)),
        LedgerStatus::Voided => Err(Rejection::declined("voided")),
    }
}

async fn void(gateway: &Gateway, headers: &HeaderMap, body: Incoming) -> Result<Reply, Rejection> {
    let key = idempotency_key(headers)?;
    Params::read(body, &[]).await?;
    let fault = gateway.delay_and_roll().await;
    if fault == Fault::BeforeEffect {
        return Err(Rejection::unavailable("simulated outage before the void"));
    }
    let status = gateway
        .ledger
        .void(&key)
        .await
        .map_err(Rejection::storage)?;
    if fault == Fault::AnswerLost {
        return Err(Rejection::unavailable(
            "simulated lost answer: the void was processed; retry with the same Idempotency-Key",
        ));
    }
    let answer = match status {
        LedgerStatus::Voided => Void::Voided,
        LedgerStatus::Captured { payment_id } => Void::AlreadyCaptured { charge: payment_id },
        LedgerStatus::Declined { reason } => Void::AlreadyDeclined { code: reason },
    };
    Ok(json(StatusCode::OK, &answer))
}

async fn refund(
    gateway: &Gateway,
    headers: &HeaderMap,
    body: Incoming,
) -> Result<Reply, Rejection> {
    let key = idempotency_key(headers)?;
    let mut params = Params::read(body, &["charge", "amount", "currency"]).await?;
    let charge = params.charge("charge")?;
    let amount = params.amount("amount")?;
    let currency = params.currency("currency")?;
    let fault = gateway.delay_and_roll().await;
    if fault == Fault::BeforeEffect {
        return Err(Rejection::unavailable("simulated outage before the refund"));
    }
    let result = gateway
        .ledger
        .refund(&key, &charge, amount, currency)
        .await
        .map_err(Rejection::storage)?;
    if fault == Fault::AnswerLost {
        return Err(Rejection::unavailable(
            "simulated lost answer: the refund was processed; retry with the same Idempotency-Key",
        ));
    }
    match result {
        Ok(entry) => Ok(json(
            StatusCode::OK,
            &Refund {
                charge,
                status: Succeeded::Succeeded,
                amount: entry.refunded,
                currency,
            },
        )),
        Err(refusal) => Err(Rejection::refund_refused(&key, &charge, refusal)),
    }
}

/// The `Idempotency-Key` header, which must be an order id.
fn idempotency_key(headers: &HeaderMap) -> Result<OrderId, Rejection> {
    let Some(value) = headers.get(api::IDEMPOTENCY_KEY) else {
        return Err(Rejection::invalid(
            ErrorCode::MissingIdempotencyKey,
            None,
            "charges, voids and refunds need an Idempotency-Key header (the order id)",
        ));
    };
    let text = value.to_str().map_err(|_| {
        Rejection::invalid(
            ErrorCode::InvalidIdempotencyKey,
            None,
            "the Idempotency-Key header is not visible ASCII",
        )
    })?;
    OrderId::parse(text).map_err(|e| {
        Rejection::invalid(
            ErrorCode::InvalidIdempotencyKey,
            None,
            format!("the Idempotency-Key must be an order id: {e}"),
        )
    })
}

/// A request's JSON object, checked against the parameters its route knows.
struct Params(Map<String, Value>);

impl Params {
    /// Reads the body: empty means no parameters; otherwise a JSON object of known keys.
    async fn read(body: Incoming, known: &[&str]) -> Result<Params, Rejection> {
        let bytes = match Limited::new(body, api::MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Rejection::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    ErrorKind::InvalidRequestError,
                    ErrorCode::BodyTooLarge,
                    format!("the body is larger than {} bytes", api::MAX_BODY_BYTES),
                ))
            }
            Err(e) => {
                return Err(Rejection::invalid(
                    ErrorCode::InvalidJson,
                    None,
                    format!("the body could not be read: {e}"),
                ))
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Params(Map::new()));
        }
        let object = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(object)) => object,
            Ok(other) => {
                return Err(Rejection::invalid(
                    ErrorCode::InvalidJson,
                    None,
                    format!("the body must be a JSON object, not {}", json_kind(&other)),
                ))
            }
            Err(e) => {
                return Err(Rejection::invalid(
                    ErrorCode::InvalidJson,
                    None,
                    format!("the body is not valid JSON: {e}"),
                ))
            }
        };
        if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(Rejection::invalid(
                ErrorCode::UnknownParameter,
                Some(unknown),
                format!(
                    "unknown parameter `{unknown}`; this route takes {}",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        Ok(Params(object))
    }

    fn take(&mut self, name: &str) -> Result<Value, Rejection> {
        self.0.remove(name).ok_or_else(|| {
            Rejection::invalid(
                ErrorCode::ParameterMissing,
                Some(name),
                format!("missing required parameter `{name}`"),
            )
        })
    }

    fn amount(&mut self, name: &str) -> Result<Money, Rejection> {
        let value = self.take(name)?;
        match value.as_i64() {
            Some(minor) if minor >= 0 => Ok(Money(minor)),
            _ => Err(Rejection::invalid(
                ErrorCode::InvalidAmount,
                Some(name),
                format!(
                    "`{name}` must be a whole number of minor units, zero or more; got {value}"
                ),
            )),
        }
    }

    fn currency(&mut self, name: &str) -> Result<Currency, Rejection> {
        let value = self.take(name)?;
        value
            .as_str()
            .and_then(|text| Currency::parse(text).ok())
            .ok_or_else(|| {
                Rejection::invalid(
                    ErrorCode::InvalidCurrency,
                    Some(name),
                    format!("`{name}` must be an ISO 4217 code like \"EUR\"; got {value}"),
                )
            })
    }

    fn source(&mut self, name: &str) -> Result<String, Rejection> {
        let value = self.take(name)?;
        match value.as_str() {
            Some(text) if !text.trim().is_empty() && text.len() <= api::MAX_SOURCE_LEN => {
                Ok(text.to_owned())
            }
            _ => Err(Rejection::invalid(
                ErrorCode::InvalidSource,
                Some(name),
                format!(
                    "`{name}` must be a card token such as \"tok_visa\" (1 to {} bytes)",
                    api::MAX_SOURCE_LEN
                ),
            )),
        }
    }

    fn charge(&mut self, name: &str) -> Result<PaymentId, Rejection> {
        let value = self.take(name)?;
        value
            .as_str()
            .and_then(|text| PaymentId::parse(text).ok())
            .ok_or_else(|| {
                Rejection::invalid(
                    ErrorCode::InvalidCharge,
                    Some(name),
                    format!("`{name}` must be a charge id such as \"pay_…\"; got {value}"),
                )
            })
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A non-200 answer on its way out.
struct Rejection {
    status: StatusCode,
    error: ApiError,
}

impl Rejection {
    fn new(
        status: StatusCode,
        kind: ErrorKind,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        Rejection {
            status,
            error: ApiError {
                kind,
                code,
                message: message.into(),
                param: None,
            },
        }
    }

    /// 400: the request is malformed.
    fn invalid(code: ErrorCode, param: Option<&str>, message: impl Into<String>) -> Self {
        let mut rejection = Rejection::new(
            StatusCode::BAD_REQUEST,
            ErrorKind::InvalidRequestError,
            code,
            message,
        );
        rejection.error.param = param.map(str::to_owned);
        rejection
    }

    /// 402: the card was declined.
    fn declined(reason: &str) -> Self {
        let code = ErrorCode::for_decline(reason).unwrap_or(ErrorCode::CardDeclined);
        Rejection::new(
            StatusCode::PAYMENT_REQUIRED,
            ErrorKind::CardError,
            code,
            format!("the card was declined: {reason}"),
        )
    }

    /// 503: a simulated transient failure.
    fn unavailable(message: &str) -> Self {
        Rejection::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::ApiError,
            ErrorCode::ServiceUnavailable,
            message,
        )
    }

    /// 500: the books could not be read or written.
    fn storage(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "gateway ledger failed");
        Rejection::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::ApiError,
            ErrorCode::LedgerStorage,
            format!("the gateway's ledger failed: {error}"),
        )
    }

    fn refund_refused(key: &OrderId, charge: &PaymentId, refusal: RefundRefusal) -> Self {
        match refusal {
            RefundRefusal::NoSuchKey => Rejection::new(
                StatusCode::NOT_FOUND,
                ErrorKind::InvalidRequestError,
                ErrorCode::ResourceMissing,
                format!("no charge was made under Idempotency-Key `{key}`"),
            ),
            RefundRefusal::ChargeMismatch { status } => Rejection::new(
                StatusCode::CONFLICT,
                ErrorKind::InvalidRequestError,
                ErrorCode::ChargeMismatch,
                format!("charge `{charge}` is not what key `{key}` came to: {status:?}"),
            ),
            RefundRefusal::CurrencyMismatch { charged } => Rejection::invalid(
                ErrorCode::InvalidCurrency,
                Some("currency"),
                format!(
                    "the charge under `{key}` was in {}",
                    charged
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "no currency".into())
                ),
            ),
            RefundRefusal::AmountTooLarge { charged } => Rejection::invalid(
                ErrorCode::AmountTooLarge,
                Some("amount"),
                format!("the charge under `{key}` was {charged}; a refund cannot exceed it"),
            ),
        }
    }

    fn into_reply(self) -> Reply {
        json(self.status, &ErrorBody { error: self.error })
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Reply {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut reply = Response::new(Full::new(Bytes::from(bytes)));
            *reply.status_mut() = status;
            reply
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            reply
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an answer");
            let mut reply = Response::new(Full::new(Bytes::from_static(
                b"{\"error\":{\"type\":\"api_error\",\"code\":\"ledger_storage\",\"message\":\"cannot encode the answer\"}}",
            )));
            *reply.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            reply
        }
    }
}
