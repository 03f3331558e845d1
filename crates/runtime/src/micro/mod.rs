//! NATS micro services (ADR-32): the server scaffold and the client that calls it.
//!
//! Both sides are re-exported here, so `shop_runtime::micro::{serve_api, request_json}`
//! reads the same as before the split.

pub mod client;
pub mod server;

pub use client::{request_json, Reply};
pub use server::{
    parse_request, reply, serve_api, serve_boxed, serve_endpoint, start_service, Api, ApiError,
    ApiResult, BoxedEndpoint, BoxedHandler, MicroSpec,
};
