//! The request of `checkout.orders.cancel`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shop_fuzz::request_orders_cancel(data));
