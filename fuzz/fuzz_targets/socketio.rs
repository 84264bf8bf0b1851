//! Socket.IO: the first line is a query (`sid_param`, `split_tag`, `strip_sid_tag`,
//! `has_several_sids`, `is_polling_handshake`, and the tag round trip with its last parameter
//! as the sid), the rest a handshake response body (`tag_handshake`).
#![no_main]

#[path = "../../tests/parsers/checks.rs"]
mod checks;

use gateway::affinity::TAG_ALPHABET;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let tag: String = (0..8)
        .map(|i| char::from(TAG_ALPHABET[usize::from(*data.get(i).unwrap_or(&0)) % 32]))
        .collect();
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (line, body) = data.split_at(split);
    let query = String::from_utf8_lossy(line);
    checks::sid_query("/socket.io/", &query);
    let params: Vec<String> = query.split('&').map(String::from).collect();
    if let Some((base, before)) = params.split_last() {
        checks::tag_round_trip(base, &tag, before, &["t=1".to_string()]);
    }
    checks::handshake(body.get(1..).unwrap_or_default(), &tag);
    checks::handshake(data, &tag);
});
