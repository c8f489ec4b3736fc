//! Fuzz target: arbitrary bytes through pgcausal::fuzzing::server_messages (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgcausal::fuzzing::server_messages(data));
