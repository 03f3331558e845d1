//! Domain-free machinery shared by every shop service.
//!
//! Connecting, declaring streams and consumers, the consumer loop (decode, then
//! handle, then ack/nak/term), the sled inbox and outbox written in one
//! transaction, the outbox relay, dead-lettering, the NATS micro-service
//! scaffold, telemetry, crash points and shutdown live here, written once.
//! Nothing in this crate knows what an order is, nor what anything is called:
//! stream, subject and header names come from the caller.
//!
//! Modules import each other in one direction only: `store` uses `outbox_entry`;
//! `ack`, `outbox` (the relay) and `micro::server` use `store`; `consumer` uses
//! those and `deadletter`; `host` joins them all. Everything uses `error`.

pub mod ack;
pub mod changelog;
pub mod cli;
pub mod commit;
pub mod connect;
pub mod consumer;
pub mod crashpoint;
pub mod deadletter;
pub mod error;
pub mod group;
pub mod host;
pub mod micro;
pub mod outbox;
pub mod outbox_entry;
pub mod partitions;
mod patience;
pub mod shutdown;
pub mod stats;
pub mod store;
pub mod streams;
pub mod telemetry;

pub use error::{BoxError, RuntimeError};

/// The allocator every shop binary installs (`#[global_allocator]` in each `main`).
///
/// Measured at 1M stored orders (docs/BENCHMARKS.md, v7): glibc's heap fragments as a
/// service's history grows (0.53× its fresh rate, `malloc_consolidate` in the profile);
/// mimalloc stays fast but holds ≈ 80 MiB more per service (248 MiB peak); jemalloc stays
/// within 0.88× of its fresh rate at 192 MiB peak.
#[cfg(feature = "jemalloc")]
pub use tikv_jemallocator::Jemalloc as Allocator;

/// Without the `jemalloc` feature (`make run`'s quick build), the system allocator.
#[cfg(not(feature = "jemalloc"))]
pub use std::alloc::System as Allocator;
