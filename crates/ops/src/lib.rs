//! Operator tools for a running shop, behind the `shop demo`, `shop trace`, `shop audit`
//! and `shop status` subcommands: drive a realistic workload, explain one order's saga,
//! check the books, and show which instance holds which partition.
//!
//! Every tool takes an already connected [`async_nats::Client`] and talks to the shop
//! only the way an operator could: the services' micro endpoints and reads of the
//! JetStream streams. Only `demo` changes anything (it places orders through checkout);
//! `trace` and `audit` only read, so they are safe on a production shop.

pub mod audit;
pub mod demo;
pub mod error;
pub mod nats;
pub mod reader;
pub mod saga;
pub mod status;
pub mod summary;
pub mod term;
pub mod trace;

pub use audit::{audit, AuditCounts, AuditOptions, AuditReport, Rule, Violation};
pub use demo::{demo, DemoOptions, DemoReport, Latency, Scenario};
pub use error::OpsError;
pub use saga::Outcome;
pub use status::{status, StatusReport};
pub use trace::{trace, trace_with, Trace, TraceEvent, TraceStatus, DEFAULT_STUCK_AFTER};
