//! The request of `<service>.deadletters.replay`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shop_fuzz::request_deadletters_replay(data));
