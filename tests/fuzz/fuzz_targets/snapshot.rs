#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| understudy_fuzz::snapshot(
    data,
    &understudy_fuzz::scratch_dir()
));
