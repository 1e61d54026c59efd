//! `snapshot`: see `aspen_fuzz::wire::snapshot`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aspen_fuzz::wire::snapshot(data));
