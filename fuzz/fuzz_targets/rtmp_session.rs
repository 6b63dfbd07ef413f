#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| deltacast::fuzzing::rtmp_session(data));
