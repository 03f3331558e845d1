//! The request of `<service>.deadletters.discard`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shop_fuzz::request_deadletters_discard(data));
