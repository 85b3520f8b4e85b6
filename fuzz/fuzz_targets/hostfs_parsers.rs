#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hitcount_fuzz::hostfs_parsers::check(data));
