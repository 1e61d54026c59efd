//! `http_body`: see `aspen_fuzz::http::body::http_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aspen_fuzz::http::body::http_body(data));
