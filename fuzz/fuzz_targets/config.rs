#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| deltacast::fuzzing::config(data));
