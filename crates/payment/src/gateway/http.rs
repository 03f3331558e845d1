//! The HTTP adapter behind [`PaymentGateway`]: Stripe-shaped calls to the gateway at
//! `SHOP_GATEWAY_URL`, at most `SHOP_GATEWAY_CONCURRENCY` in flight, as a provider's
//! rate limit would have it.
//!
//! How answers map: 200 is the outcome; 402 is a decline; network errors, timeouts and
//! 5xx are transient (retried under the same key); any other 4xx means our request is
//! wrong, which is logged loudly with the body and retried too, because giving up would
//! leave the order's money undecided. This is the part a real provider's adapter replaces.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;
use shop_events::{Currency, Money, OrderId, PaymentId};
use tokio::sync::Semaphore;

use super::wire;
use super::{ChargeOutcome, LedgerEntry, PaymentGateway, VoidOutcome};
use crate::PaymentError;

/// Where and how hard the adapter calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGatewayConfig {
    /// Base URL, `http://host:port` (plain HTTP), optionally with a path prefix.
    pub url: String,
    /// Calls in flight at most, from this payment instance.
    pub concurrency: usize,
    /// How long one call may take, from sending to the last byte of the answer.
    pub timeout: Duration,
}

/// The adapter.
#[derive(Debug, Clone)]
pub struct HttpGateway {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

/// A gateway's answer, read whole.
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl HttpGateway {
    /// Checks the URL and builds the client; connects lazily, on the first call.
    pub fn new(config: &HttpGatewayConfig) -> Result<HttpGateway, PaymentError> {
        let base = config.url.trim_end_matches('/').to_owned();
        let uri: hyper::Uri =
            base.parse()
                .map_err(|e: hyper::http::uri::InvalidUri| PaymentError::GatewayUrl {
                    url: config.url.clone(),
                    reason: e.to_string(),
                })?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(PaymentError::GatewayUrl {
                url: config.url.clone(),
                reason: "expected http://host:port (plain HTTP; the simulator speaks no TLS)"
                    .into(),
            });
        }
        if config.concurrency == 0 {
            return Err(PaymentError::Config(
                "the gateway concurrency must be at least 1".into(),
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        let client = Client::builder(TokioExecutor::new())
            // One idle connection per permit: a busy instance reuses them all.
            .pool_max_idle_per_host(config.concurrency)
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(HttpGateway {
            base,
            client,
            permits: Arc::new(Semaphore::new(config.concurrency)),
            timeout: config.timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// Sends one call under a concurrency permit and reads its whole answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        key: Option<&OrderId>,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, PaymentError> {
        let call = format!("{method} {path}");
        // The permit is waited for outside the timeout: queueing behind our own cap is
        // not the gateway being slow.
        let _permit = self.permits.acquire().await.map_err(|_| {
            PaymentError::Config("the gateway's concurrency limiter was closed".into())
        })?;
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.header(wire::IDEMPOTENCY_KEY, key.as_str());
        }
        if body.is_some() {
            request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| PaymentError::GatewayUrl {
                url: self.base.clone(),
                reason: e.to_string(),
            })?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|source| {
                PaymentError::GatewayUnreachable {
                    url: self.base.clone(),
                    source,
                }
            })?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(PaymentError::GatewayBody)?
                .to_bytes();
            Ok(Answer { status, body })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| PaymentError::GatewayTimeout {
                call,
                after: self.timeout,
            })?
    }

    async fn post<T: Serialize>(
        &self,
        path: &str,
        key: &OrderId,
        body: &T,
    ) -> Result<Answer, PaymentError> {
        let bytes = serde_json::to_vec(body).map_err(|source| PaymentError::GatewayAnswer {
            call: format!("POST {path} (encoding the request)"),
            source,
        })?;
        self.send(Method::POST, path, Some(key), Some(bytes)).await
    }
}

impl Answer {
    fn read<T: DeserializeOwned>(&self, call: &str) -> Result<T, PaymentError> {
        serde_json::from_slice(&self.body).map_err(|source| PaymentError::GatewayAnswer {
            call: call.to_owned(),
            source,
        })
    }

    /// The failure a non-200, non-402 answer means.
    fn failure(&self, call: &str) -> PaymentError {
        let body = String::from_utf8_lossy(&self.body).into_owned();
        let status = self.status.as_u16();
        if self.status.is_client_error() {
            tracing::error!(
                call,
                status,
                body = %body,
                "payment gateway refused our request: a bug in how payment calls it; retrying"
            );
            PaymentError::GatewayRejected {
                call: call.to_owned(),
                status,
                body,
            }
        } else {
            PaymentError::GatewayFailed {
                call: call.to_owned(),
                status,
                body,
            }
        }
    }
}

impl PaymentGateway for HttpGateway {
    async fn charge(
        &self,
        key: &OrderId,
        amount: Money,
        currency: Currency,
        token: &str,
    ) -> Result<ChargeOutcome, PaymentError> {
        let call = format!("charge for {key}");
        let request = wire::ChargeRequest {
            amount,
            currency,
            source: token,
        };
        let answer = self.post(wire::CHARGES, key, &request).await?;
        match answer.status {
            StatusCode::OK => {
                let charge: wire::Charge = answer.read(&call)?;
                Ok(ChargeOutcome::Captured {
                    payment_id: charge.id,
                })
            }
            StatusCode::PAYMENT_REQUIRED => {
                let declined: wire::ErrorBody = answer.read(&call)?;
                Ok(ChargeOutcome::Declined {
                    reason: declined.error.code,
                })
            }
            _ => Err(answer.failure(&call)),
        }
    }

    async fn void(&self, key: &OrderId) -> Result<VoidOutcome, PaymentError> {
        let call = format!("void for {key}");
        let answer = self.post(wire::VOIDS, key, &serde_json::Map::new()).await?;
        if answer.status != StatusCode::OK {
            return Err(answer.failure(&call));
        }
        Ok(match answer.read::<wire::Void>(&call)? {
            wire::Void::Voided => VoidOutcome::Voided,
            wire::Void::AlreadyCaptured { charge } => {
                VoidOutcome::AlreadyCaptured { payment_id: charge }
            }
            wire::Void::AlreadyDeclined { code } => VoidOutcome::AlreadyDeclined { reason: code },
        })
    }

    async fn refund(
        &self,
        key: &OrderId,
        payment_id: &PaymentId,
        amount: Money,
        currency: Currency,
    ) -> Result<(), PaymentError> {
        let call = format!("refund for {key}");
        let request = wire::RefundRequest {
            charge: payment_id,
            amount,
            currency,
        };
        let answer = self.post(wire::REFUNDS, key, &request).await?;
        if answer.status != StatusCode::OK {
            return Err(answer.failure(&call));
        }
        Ok(())
    }

    async fn ledger(&self) -> Result<Vec<LedgerEntry>, PaymentError> {
        let call = "ledger";
        let answer = self.send(Method::GET, wire::LEDGER, None, None).await?;
        match answer.status {
            StatusCode::OK => answer.read(call),
            StatusCode::NOT_FOUND => Err(PaymentError::LedgerNotOffered {
                url: self.base.clone(),
            }),
            _ => Err(answer.failure(call)),
        }
    }
}
