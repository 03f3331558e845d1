//! The request of `checkout.orders.get`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shop_fuzz::request_order_ref(data));
