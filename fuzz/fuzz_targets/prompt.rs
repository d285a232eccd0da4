#![no_main]

#[path = "../../tests/common/fuzz_entries.rs"]
#[allow(dead_code)]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entries::prompt(data));
