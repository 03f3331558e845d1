//! A world per test: a fresh nats-server, the three services in-process, and a client.

#![allow(dead_code)]

use std::time::Duration;

use shop_harness::eventually;
use shop_ops::{trace_with, TraceStatus};

pub const SETTLE: Duration = Duration::from_secs(20);

#[allow(unused_imports)] // each test file uses a different subset
pub use shop_harness::{world, World};

/// Waits until the trace of `order_id` says its saga is settled, compensations included.
pub async fn wait_saga_settled(client: &async_nats::Client, order_id: &str) -> anyhow::Result<()> {
    eventually(
        SETTLE,
        &format!("the saga of {order_id} to settle"),
        || async {
            let trace = trace_with(
                client,
                order_id,
                Duration::from_secs(60),
                &mut Vec::new(),
                false,
            )
            .await
            .ok()?;
            matches!(trace.status, TraceStatus::Settled { .. }).then_some(())
        },
    )
    .await?;
    Ok(())
}

/// Waits until no service has anything left in its outbox.
pub async fn wait_outboxes_empty(client: &async_nats::Client) -> anyhow::Result<()> {
    eventually(SETTLE, "every outbox to be empty", || async {
        for service in shop_ops::nats::SERVICES {
            let stats = shop_ops::nats::stats(client, service).await?;
            if shop_ops::nats::outbox_backlog(&stats)? != 0 {
                return None;
            }
        }
        Some(())
    })
    .await?;
    Ok(())
}
