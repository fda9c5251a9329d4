//! Fuzz target `api_body`: the properties are those of [`cairn_tests::fuzz::api_body`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_tests::fuzz::api_body(data));
