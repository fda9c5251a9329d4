//! Fuzz target `message`: the properties are those of [`cairn_tests::fuzz::message`].

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cairn_tests::fuzz::message(data));
