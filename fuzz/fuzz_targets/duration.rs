#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| hitcount_fuzz::duration::check(data));
