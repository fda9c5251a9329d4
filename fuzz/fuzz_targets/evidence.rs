//! Fuzz target `evidence`: the properties are those of [`cairn_tests::fuzz::evidence`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_tests::fuzz::evidence(data));
