//! The consumer entry point: a subject and a payload through \`shop_events::decode\`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shop_fuzz::decode_envelope(data));
