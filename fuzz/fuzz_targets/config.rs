//! `Config::from_yaml` on any text (lossy UTF-8), then `Runtime::compile` when the config
//! needs no file or name resolution: `Ok` or `Err`, quickly, never a panic.
#![no_main]

#[path = "../../tests/parsers/checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::config_text(&String::from_utf8_lossy(data));
});
