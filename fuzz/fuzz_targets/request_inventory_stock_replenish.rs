//! The request of `inventory.stock.replenish`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shop_fuzz::request_stock_replenish(data));
