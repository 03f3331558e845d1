//! The request of `checkout.orders.list`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shop_fuzz::request_orders_list(data));
