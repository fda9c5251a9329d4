//! Fuzz target `genesis`: the properties are those of [`cairn_tests::fuzz::genesis`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_tests::fuzz::genesis(data));
