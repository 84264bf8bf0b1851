//! The sticky cookie: `proxy::cookie` on any Cookie lines (the first line is the cookie
//! name), and the Set-Cookie -> Cookie -> tag -> backend round trip with parameters and other
//! cookies taken from the input.
#![no_main]

#[path = "../../tests/parsers/checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let name = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let rest: Vec<Vec<u8>> = lines.map(<[u8]>::to_vec).collect();
    checks::cookie_lines(&rest, &name);

    let byte = |i: usize| usize::from(*data.get(i).unwrap_or(&0));
    let valid_name: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(32)
        .collect();
    let valid_name = if valid_name.is_empty() {
        "gw".to_string()
    } else {
        valid_name
    };
    let others: Vec<(String, String)> = rest
        .iter()
        .flat_map(|l| {
            String::from_utf8_lossy(l)
                .split(';')
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .take(16)
        .collect();
    let secret: String = valid_name.chars().rev().collect();
    checks::sticky_cookie(
        1 + byte(0) % 5,
        &valid_name,
        ["Lax", "Strict", "None"][byte(1) % 3],
        (byte(2) % 2 == 0).then_some(secret.as_str()),
        byte(3),
        byte(4) % 2 == 0,
        &others,
        byte(5),
        "abcdefgh",
    );
});
