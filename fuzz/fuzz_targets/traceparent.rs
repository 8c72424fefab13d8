#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fngate::fuzzing::traceparent(data));
