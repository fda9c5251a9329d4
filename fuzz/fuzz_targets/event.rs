//! Fuzz target `event`: the properties are those of [`cairn_tests::fuzz::event`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_tests::fuzz::event(data));
