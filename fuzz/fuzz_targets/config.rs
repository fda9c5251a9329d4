//! Fuzz target `config`: the properties are those of [`cairn_tests::fuzz::config`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_tests::fuzz::config(data));
