//! The checkout service: owns orders, decides their outcome, and cancels those past their deadline.
//!
//! It reacts to `OrderPlaced`, `OrderCancellationRequested`, `StockReservationFailed`,
//! `PaymentCaptured` and `PaymentDeclined`, and publishes `OrderRejected`,
//! `OrderConfirmed` and `OrderCancelled`. [`run`] is what `main`, `shop run` and
//! the test harness start.

pub mod api;
pub mod clock;
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

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{CheckoutArgs, Config};
pub use error::CheckoutError;

pub const SERVICE: &str = "checkout";

/// Runs checkout until `shutdown` fires, then stops gracefully.
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), CheckoutError> {
    let deadline_ms = i64::try_from(config.order_deadline.as_millis())
        .map_err(|_| CheckoutError::Config("order deadline too large".into()))?;
    // The trees' handles are known before the store opens: the runtime's own trees come
    // first, then ours in the order of `store::TREES`.
    let trees = store::Trees::from_ids(&shop_runtime::store::service_tree_ids(store::TREES.len()))
        .ok_or_else(|| CheckoutError::Config("checkout trees missing".into()))?;
    let orders = Arc::new(store::Orders { trees });
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
                orders.clone(),
            )),
        ),
        shutdown.clone(),
    )
    .await?;
    let ownership = Ownership::of(&host, orders);
    let handler = Arc::new(Contract(handlers::CheckoutHandler {
        trees,
        deadline_ms,
        clock: config.clock.clone(),
    }));
    host.consume(
        |p| {
            consumer_spec(
                SERVICE,
                Domain::Orders,
                &[
                    EventKind::OrderPlaced,
                    EventKind::OrderCancellationRequested,
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
                &[EventKind::StockReservationFailed],
                p,
            )
        },
        handler.clone(),
    );
    host.consume(
        |p| {
            consumer_spec(
                SERVICE,
                Domain::Payments,
                &[EventKind::PaymentCaptured, EventKind::PaymentDeclined],
                p,
            )
        },
        handler,
    );
    host.spawn_worker(handlers::run_deadline_timer(
        host.store.clone(),
        trees,
        deadline_ms,
        config.clock.clone(),
        host.waker.clone(),
        ownership.clone(),
        host.shutdown(),
    ));

    let spec = MicroSpec {
        name: SERVICE.to_owned(),
        version: config.scale.version(env!("CARGO_PKG_VERSION")),
        description:
            "Owns orders: validates, confirms, cancels (deadline, stock, payment, customer)"
                .to_owned(),
        metadata: HashMap::from([
            ("instance".to_owned(), config.scale.instance_of(SERVICE)),
            ("streams".to_owned(), "ORDERS,INVENTORY,PAYMENTS".to_owned()),
            (
                "order_deadline".to_owned(),
                humantime::format_duration(config.order_deadline).to_string(),
            ),
        ]),
    };
    let api = api::Api {
        js: host.js.clone(),
        store: host.store.clone(),
        trees,
        ownership,
    };
    host.spawn_worker(
        api.clone()
            .serve_list_parts(config.scale.instance_of(SERVICE), host.shutdown()),
    );
    host.serve_api(spec, api, Duration::from_secs(10)).await?;
    Ok(())
}
