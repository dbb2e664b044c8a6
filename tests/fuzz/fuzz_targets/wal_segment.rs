#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| understudy_fuzz::wal_segment(
    data,
    &understudy_fuzz::scratch_dir()
));
