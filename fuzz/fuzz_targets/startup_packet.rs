//! Fuzz target: arbitrary bytes through pgcausal::fuzzing::startup_packet (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgcausal::fuzzing::startup_packet(data));
