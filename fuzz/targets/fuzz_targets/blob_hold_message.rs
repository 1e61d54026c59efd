//! `blob_hold_message`: see `aspen_fuzz::wire::blob_hold_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aspen_fuzz::wire::blob_hold_message(data));
