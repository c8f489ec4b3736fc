//! Fuzz target: arbitrary bytes through pgcausal::fuzzing::classify_sql (see its doc).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgcausal::fuzzing::classify_sql(data));
