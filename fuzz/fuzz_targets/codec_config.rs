#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    deltacast::fuzzing::avcc(data);
    deltacast::fuzzing::asc(data);
    deltacast::fuzzing::flv_file(data);
});
