//! `value_message`: see `aspen_fuzz::wire::value_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aspen_fuzz::wire::value_message(data));
