//! The data of `StockReplenished`, parsed and checked as `decode` does.
#![no_main]

libfuzzer_sys::fuzz_target!(
    |data: &[u8]| shop_fuzz::validate_event::<shop_events::StockReplenished>(data)
);
