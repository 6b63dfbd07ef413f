#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| deltacast::fuzzing::webrtc_ingest(data));
