//! `proxy::normalize::normalize` on any path: the output is normal (no empty, `.` or `..`
//! segment, canonical escapes) and idempotent.
#![no_main]

#[path = "../../tests/parsers/checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let path = String::from_utf8_lossy(data);
    checks::normalized(&path);
    checks::normalized(&format!("/{path}"));
});
