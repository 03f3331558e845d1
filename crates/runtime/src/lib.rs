//! Domain-free machinery shared by every shop service.
//!
//! Connecting, declaring streams and consumers, the consumer loop (decode, then
//! handle, then ack/nak/term), the sled inbox and outbox written in one
//! transaction, the outbox relay, dead-lettering, the NATS micro-service
//! scaffold, telemetry, crash points and shutdown live here, written once.
//! Nothing in this crate knows what an order is.

pub mod cli;
pub mod connect;
pub mod consumer;
pub mod crashpoint;
pub mod deadletter;
pub mod error;
pub mod host;
pub mod micro;
pub mod outbox;
pub mod shutdown;
pub mod stats;
pub mod store;
pub mod streams;
pub mod telemetry;

pub use error::RuntimeError;

/// The allocator every shop binary installs (`#[global_allocator]` in each `main`).
///
/// Why not glibc's: its heap fragments as a service's history grows — at 1M stored
/// orders the saga ran at 0.53× its fresh rate with glibc (`malloc_consolidate` and
/// `unlink_chunk` in the profile), and flat with mimalloc, for ≈ 80 MiB more resident
/// memory per service (docs/BENCHMARKS.md, v6 and the allocator experiment).
pub use mimalloc::MiMalloc as Allocator;
