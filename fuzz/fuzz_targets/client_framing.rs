//! Fuzz target: arbitrary bytes through pgcausal::fuzzing::client_messages (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgcausal::fuzzing::client_messages(data));
