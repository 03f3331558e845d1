//! The request of `<service>.deadletters.list`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shop_fuzz::request_deadletters_list(data));
