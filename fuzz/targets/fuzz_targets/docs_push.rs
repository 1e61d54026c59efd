//! `docs_push`: see `aspen_fuzz::wire::docs_push`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aspen_fuzz::wire::docs_push(data));
