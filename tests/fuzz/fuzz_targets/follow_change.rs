#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| understudy_fuzz::follow_change(data));
