//! `config`: see `aspen_fuzz::config::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| aspen_fuzz::config::config(data));
