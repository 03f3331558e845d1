//! A payment gateway simulator shaped like Stripe, run as a process of its own.
//!
//! `POST /v1/charges`, `/v1/voids` and `/v1/refunds` each carry an `Idempotency-Key`
//! header (the order id): a key is charged at most once, however often it is asked, and
//! every answer is durable in the simulator's ledger before it leaves. `GET /v1/ledger`
//! answers those books (`Vec<shop_events::api::payment::LedgerEntry>`) for audits, and
//! `GET /healthz` says it serves and how many calls are in flight. Latency and a share
//! of 503s (half of them after the effect, as a lost answer) make it misbehave on
//! purpose. [`api`] has the routes and bodies; [`ledger`] the books.
//!
//! It is one process for all payment instances, so idempotency by order id holds
//! however many of them run, as it would at a real provider.

pub mod api;
pub mod config;
pub mod error;
pub mod ledger;
pub mod server;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use api::{Health, LedgerEntry, LedgerStatus};
pub use config::{BehaviourArgs, SimulatorConfig, DEFAULT_LISTEN, LEDGER_DIR};
pub use error::GatewaySimError;
pub use ledger::Ledger;
pub use server::Gateway;

/// Binds `listen` (port 0 picks a free one).
pub async fn bind(listen: SocketAddr) -> Result<TcpListener, GatewaySimError> {
    TcpListener::bind(listen)
        .await
        .map_err(|source| GatewaySimError::Bind {
            addr: listen,
            source,
        })
}

/// Serves the simulator with its books in `ledger_dir` on `listener` until `shutdown`
/// resolves; what the `gateway-sim` binary runs.
pub async fn run(
    listener: TcpListener,
    ledger_dir: &Path,
    config: SimulatorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewaySimError> {
    let gateway = Arc::new(Gateway::new(Ledger::open(ledger_dir)?, config));
    server::run(listener, gateway, shutdown).await
}

/// A simulator running as a task of this process, for `shop run` and tests.
/// Dropping it stops the server too, without waiting.
#[derive(Debug)]
pub struct Simulator {
    addr: SocketAddr,
    gateway: Arc<Gateway>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), GatewaySimError>>,
}

impl Simulator {
    /// Opens the books in `ledger_dir`, binds `listen` and serves in a task.
    pub async fn start(
        listen: SocketAddr,
        ledger_dir: &Path,
        config: SimulatorConfig,
    ) -> Result<Simulator, GatewaySimError> {
        let gateway = Arc::new(Gateway::new(Ledger::open(ledger_dir)?, config));
        let listener = bind(listen).await?;
        let addr = listener
            .local_addr()
            .map_err(|source| GatewaySimError::Bind {
                addr: listen,
                source,
            })?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, gateway.clone(), async move {
            // A dropped handle stops the server as well as an explicit stop.
            let _ = stopped.await;
        }));
        tracing::info!(%addr, ledger = %ledger_dir.display(), "payment gateway simulator listening");
        Ok(Simulator {
            addr,
            gateway,
            stop: Some(stop),
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL payment's adapter takes, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How busy it is and was: calls in flight now and at most.
    pub fn health(&self) -> Health {
        self.gateway.health()
    }

    /// The books, read directly.
    pub fn ledger(&self) -> Result<Vec<LedgerEntry>, GatewaySimError> {
        self.gateway.ledger().entries()
    }

    /// Whether the server stopped on its own, which it only does on a failure.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops accepting, lets calls in flight finish, flushes the books and closes them.
    pub async fn stop(mut self) -> Result<(), GatewaySimError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let Simulator { gateway, task, .. } = self;
        let result = task.await.map_err(GatewaySimError::Task)?;
        // The books close when the last handle goes; ours is the last once the server is done.
        drop(gateway);
        result
    }
}
