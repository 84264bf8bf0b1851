//! `Router::find` on route tables and requests written as lines (`R<hosts>\t<=|^><path>` for
//! a route, `<host>\t<path>` for a request), checked against the README's matching rule.
#![no_main]

#[path = "../../tests/parsers/checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::router_text(&String::from_utf8_lossy(data));
});
