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
/// Why not glibc's: under load the services allocate and free many small buffers
/// (sled node copies, transaction write sets, JSON), and glibc's `malloc`/`free`/
/// `malloc_consolidate` were ~30 % of the services' worker-thread CPU in the v4 profile
/// (docs/BENCHMARKS.md).
pub use mimalloc::MiMalloc as Allocator;
