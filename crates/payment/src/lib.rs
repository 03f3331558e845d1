//! The payment service: charges an order's total exactly once when its stock is reserved,
//! and refunds exactly once when a paid order is cancelled.
//!
//! It reacts to `OrderPlaced`, `StockReserved` and `OrderCancelled`, and publishes
//! `PaymentCaptured`, `PaymentDeclined` and `PaymentRefunded`.

pub mod api;
pub mod config;
pub mod domain;
pub mod error;
pub mod gateway;
pub mod handlers;
pub mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shop_events::subjects::Domain;
use shop_events::EventKind;
use shop_runtime::host::Host;
use shop_runtime::micro::MicroSpec;
use shop_runtime::shutdown::Shutdown;
use shop_shell::scale::{partitioning, Mode, Ownership};
use shop_shell::{consumer_spec, host_config, Contract};
use tokio::sync::Notify;

pub use config::{Config, PaymentArgs};
pub use error::PaymentError;

pub const SERVICE: &str = "payment";

/// Runs payment until `shutdown` fires, then stops gracefully.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), PaymentError> {
    let gateway = Arc::new(gateway::HttpGateway::new(&config.gateway)?);
    let trees = store::Trees::from_ids(&shop_runtime::store::service_tree_ids(store::TREES.len()))
        .ok_or_else(|| PaymentError::Config("payment trees missing".into()))?;
    let payments = Arc::new(store::Payments { trees });
    let mut host = Host::start(
        host_config(
            SERVICE,
            &config.nats,
            &config.data_dir,
            config.stream_replicas,
            store::TREES.to_vec(),
            Some(partitioning(
                SERVICE,
                &config.scale,
                config.stream_replicas,
                Mode::Partitioned,
                payments.clone(),
            )),
        ),
        shutdown.clone(),
    )
    .await?;
    let ownership = Ownership::of(&host, payments);
    let work_ready = Arc::new(Notify::new());
    let handler = Arc::new(Contract(handlers::PaymentHandler {
        trees,
        work_ready: work_ready.clone(),
    }));
    host.consume(
        |p| {
            consumer_spec(
                SERVICE,
                Domain::Orders,
                &[EventKind::OrderPlaced, EventKind::OrderCancelled],
                p,
            )
        },
        handler.clone(),
    );
    host.consume(
        |p| consumer_spec(SERVICE, Domain::Inventory, &[EventKind::StockReserved], p),
        handler,
    );
    let worker = handlers::GatewayWorker {
        store: host.store.clone(),
        trees,
        gateway: gateway.clone(),
        concurrency: config.gateway.concurrency,
        waker: host.waker.clone(),
        stats: host.stats.clone(),
        work_ready,
        ownership: ownership.clone(),
    };
    host.spawn_worker(worker.run(host.shutdown()));

    let spec = MicroSpec {
        name: SERVICE.to_owned(),
        version: config.scale.version(env!("CARGO_PKG_VERSION")),
        description: "Charges and refunds orders exactly once through the payment gateway"
            .to_owned(),
        metadata: HashMap::from([
            ("instance".to_owned(), config.scale.instance_of(SERVICE)),
            ("streams".to_owned(), "ORDERS,INVENTORY".to_owned()),
            ("gateway".to_owned(), config.gateway.url.clone()),
            (
                "gateway_concurrency".to_owned(),
                config.gateway.concurrency.to_string(),
            ),
            (
                "gateway_timeout".to_owned(),
                humantime::format_duration(config.gateway.timeout).to_string(),
            ),
        ]),
    };
    let api = api::Api {
        store: host.store.clone(),
        trees,
        gateway,
        ownership,
    };
    host.serve_api(spec, api, Duration::from_secs(10)).await?;
    Ok(())
}
