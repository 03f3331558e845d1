//! The inventory service: reserves every line of an order at once, sells or releases it, and takes in stock.
//!
//! It reacts to `OrderPlaced`, `OrderConfirmed`, `OrderCancelled` and
//! `StockReplenished`, and publishes `StockReserved`, `StockReservationFailed`,
//! `StockCommitted` and `StockReleased`.

pub mod api;
pub mod config;
pub mod domain;
pub mod error;
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

pub use config::Config;
pub use error::InventoryError;

pub const SERVICE: &str = "inventory";

/// Runs inventory until `shutdown` fires, then stops gracefully.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), InventoryError> {
    let trees = store::Trees::from_ids(&shop_runtime::store::service_tree_ids(store::TREES.len()))
        .ok_or_else(|| InventoryError::Config("inventory trees missing".into()))?;
    let holdings = Arc::new(store::Holdings { trees });
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
                Mode::ActiveStandby,
                holdings.clone(),
            )),
        ),
        shutdown.clone(),
    )
    .await?;
    let ownership = Ownership::of(&host, holdings);
    let handler = Arc::new(Contract(handlers::InventoryHandler { trees }));
    host.consume(
        |p| {
            consumer_spec(
                SERVICE,
                Domain::Orders,
                &[
                    EventKind::OrderPlaced,
                    EventKind::OrderConfirmed,
                    EventKind::OrderCancelled,
                ],
                p,
            )
        },
        handler.clone(),
    );
    host.consume(
        |p| {
            consumer_spec(
                SERVICE,
                Domain::Inventory,
                &[EventKind::StockReplenished],
                p,
            )
        },
        handler,
    );

    let spec = MicroSpec {
        name: SERVICE.to_owned(),
        version: config.scale.version(env!("CARGO_PKG_VERSION")),
        description: "Reserves, sells and releases stock; takes in replenishments".to_owned(),
        metadata: HashMap::from([
            ("instance".to_owned(), config.scale.instance_of(SERVICE)),
            ("streams".to_owned(), "ORDERS,INVENTORY".to_owned()),
        ]),
    };
    let api = api::Api {
        js: host.js.clone(),
        store: host.store.clone(),
        trees,
        ownership,
    };
    host.serve_api(spec, api, Duration::from_secs(10)).await?;
    Ok(())
}
