//! `http_request`: see `aspen_fuzz::http::request::http_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aspen_fuzz::http::request::http_request(data));
