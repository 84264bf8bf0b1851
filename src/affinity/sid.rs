//! The engine.io `sid`: finding and splitting it in a request, stripping the node tag before
//! the request goes upstream, and tagging it in a handshake response body (EIO4 and EIO3
//! framing). A tagged sid is `<engine sid>.<tag>`, where the tag is the backend's 8-character
//! tag ([`super::make_tag`]): stateless, the same in every gateway process.

/// Length of a node tag.
pub const TAG_LEN: usize = 8;
/// Longest sid we look at, tag included: longer ones are treated as untagged, and a sid that
/// would be longer once tagged is never tagged (its tag could not be split off again).
pub const MAX_SID_LEN: usize = 128;
/// Longest heartbeat (pingInterval + pingTimeout) taken from an open packet: one day. A
/// larger one is treated as absent (the default session expiry applies).
pub const MAX_HEARTBEAT_MS: u64 = 86_400_000;
/// Alphabet of node tags.
pub const TAG_ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The `sid` query parameter, if any.
pub fn sid_param(query: Option<&str>) -> Option<&str> {
    crate::util::query_value(query, "sid").filter(|s| !s.is_empty())
}

/// Whether the query asks for an engine.io polling handshake (`EIO=` and `transport=polling`, no sid).
pub fn is_polling_handshake(query: Option<&str>) -> bool {
    let Some(q) = query else { return false };
    let (mut eio, mut polling) = (false, false);
    for kv in q.split('&') {
        if kv.starts_with("sid=") {
            return false;
        }
        eio |= kv.starts_with("EIO=");
        polling |= kv == "transport=polling";
    }
    eio && polling
}

/// Whether `tag` looks like one of our node tags.
pub fn is_tag(tag: &str) -> bool {
    tag.len() == TAG_LEN && tag.bytes().all(|b| TAG_ALPHABET.contains(&b))
}

/// Splits `<sid>.<tag>`; `None` when the sid carries no well-formed tag.
pub fn split_tag(sid: &str) -> Option<(&str, &str)> {
    if sid.len() > MAX_SID_LEN {
        return None;
    }
    let (base, tag) = sid.rsplit_once('.')?;
    (!base.is_empty() && is_tag(tag)).then_some((base, tag))
}

/// The path-and-query with the tag removed from `sid=<sid>.<tag>`, or `None` when there is none.
pub fn strip_sid_tag(path: &str, query: Option<&str>) -> Option<String> {
    let q = query?;
    let sid = sid_param(Some(q))?;
    let (base, _) = split_tag(sid)?;
    let mut out = String::with_capacity(path.len() + q.len() + 1);
    out.push_str(path);
    out.push('?');
    for (i, kv) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        if kv.starts_with("sid=") {
            out.push_str("sid=");
            out.push_str(base);
        } else {
            out.push_str(kv);
        }
    }
    Some(out)
}

/// What tagging a handshake body found.
#[derive(Debug, PartialEq, Eq)]
pub struct Tagged {
    /// The new body.
    pub body: Vec<u8>,
    /// The engine sid as the backend minted it.
    pub sid: String,
    /// pingInterval + pingTimeout in ms, when the open packet says (at most
    /// [`MAX_HEARTBEAT_MS`]).
    pub heartbeat_ms: Option<u64>,
}

fn json_number(s: &str, key: &str) -> Option<u64> {
    let i = s.find(key)? + key.len();
    let rest = s[i..].trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Inserts `.<tag>` after the sid of an open packet `0{...}`; returns the new packet and the sid.
fn tag_open_packet(packet: &str, tag: &str) -> Option<(String, String, Option<u64>)> {
    let json = packet.strip_prefix('0')?;
    if !json.starts_with('{') {
        return None;
    }
    const KEY: &str = "\"sid\":\"";
    let start = json.find(KEY)? + KEY.len();
    let len = json[start..].find('"')?;
    let sid = &json[start..start + len];
    if sid.is_empty() || sid.len() + 1 + tag.len() > MAX_SID_LEN || sid.contains(['\\', '.']) {
        return None;
    }
    let heartbeat = json_number(json, "\"pingInterval\":")
        .zip(json_number(json, "\"pingTimeout\":"))
        .and_then(|(a, b)| a.checked_add(b))
        .filter(|&h| h <= MAX_HEARTBEAT_MS);
    let mut out = String::with_capacity(packet.len() + 1 + tag.len());
    out.push('0');
    out.push_str(&json[..start + len]);
    out.push('.');
    out.push_str(tag);
    out.push_str(&json[start + len..]);
    Some((out, sid.to_string(), heartbeat))
}

/// Tags the sid in a polling handshake response body: EIO4 (`0{"sid":...}`, packets separated
/// by 0x1e) or EIO3 (`<len>:0{"sid":...}` with the length prefix adjusted). `None` when the
/// body is not an open packet we understand: it is then passed on untouched.
pub fn tag_handshake(body: &[u8], tag: &str) -> Option<Tagged> {
    let text = std::str::from_utf8(body).ok()?;
    if text.starts_with('0') {
        // EIO4: the open packet is the first record.
        let end = text.find('\u{1e}').unwrap_or(text.len());
        let (packet, rest) = text.split_at(end);
        let (new, sid, heartbeat_ms) = tag_open_packet(packet, tag)?;
        let mut out = new.into_bytes();
        out.extend_from_slice(rest.as_bytes());
        return Some(Tagged {
            body: out,
            sid,
            heartbeat_ms,
        });
    }
    // EIO3 string payload: <length in characters>:<packet>...
    let colon = text.find(':')?;
    let n: usize = text[..colon].parse().ok()?;
    let after = &text[colon + 1..];
    let split = after.char_indices().nth(n).map_or(after.len(), |(i, _)| i);
    if after[..split].chars().count() != n {
        return None;
    }
    let (packet, rest) = after.split_at(split);
    let (new, sid, heartbeat_ms) = tag_open_packet(packet, tag)?;
    let mut out = format!("{}:{}", new.chars().count(), new).into_bytes();
    out.extend_from_slice(rest.as_bytes());
    Some(Tagged {
        body: out,
        sid,
        heartbeat_ms,
    })
}

/// The `400 Session ID unknown` body engine.io itself sends, so clients reconnect.
pub const SESSION_UNKNOWN: &[u8] = br#"{"code":1,"message":"Session ID unknown"}"#;
/// engine.io's answer to a malformed request (code 3), used for a query with two `sid`s.
pub const BAD_REQUEST: &[u8] = br#"{"code":3,"message":"Bad request"}"#;

/// Whether the query carries more than one `sid` parameter: which one the backend reads is
/// its choice, so such a request is refused rather than routed by one and served by another.
pub fn has_several_sids(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.split('&').filter(|kv| kv.starts_with("sid=")).count() > 1)
}

/// Whether a backend's 400 body is engine.io's "Session ID unknown".
pub fn is_session_unknown(body: &[u8]) -> bool {
    body.windows(b"Session ID unknown".len())
        .any(|w| w == b"Session ID unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    const EIO4: &str = r#"0{"sid":"kB5Oqd_dgt28MwpTAAAA","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;

    #[test]
    fn finds_sid_and_handshakes() {
        assert_eq!(
            sid_param(Some("EIO=4&transport=polling&sid=abc.defghijk")),
            Some("abc.defghijk")
        );
        assert_eq!(sid_param(Some("EIO=4&transport=polling")), None);
        assert_eq!(sid_param(Some("sid=")), None);
        assert!(is_polling_handshake(Some("EIO=4&transport=polling&t=Nx")));
        assert!(!is_polling_handshake(Some("EIO=4&transport=websocket")));
        assert!(!is_polling_handshake(Some("EIO=4&transport=polling&sid=x")));
        assert!(!is_polling_handshake(None));
    }

    #[test]
    fn splits_only_well_formed_tags() {
        assert_eq!(
            split_tag("kB5Oqd_dgt28MwpTAAAA.abcdefgh"),
            Some(("kB5Oqd_dgt28MwpTAAAA", "abcdefgh"))
        );
        assert_eq!(split_tag("kB5Oqd_dgt28MwpTAAAA"), None);
        assert_eq!(
            split_tag("kB5Oqd.ABCDEFGH"),
            None,
            "upper case is not our alphabet"
        );
        assert_eq!(split_tag("kB5Oqd.abc"), None, "too short");
        assert_eq!(split_tag(".abcdefgh"), None, "no sid before the tag");
        assert_eq!(
            split_tag(&format!("{}.abcdefgh", "x".repeat(200))),
            None,
            "over-long sid"
        );
    }

    #[test]
    fn strips_the_tag_and_keeps_the_rest() {
        assert_eq!(
            strip_sid_tag(
                "/socket.io/",
                Some("EIO=4&transport=polling&t=1&sid=AAA.abcdefgh")
            )
            .unwrap(),
            "/socket.io/?EIO=4&transport=polling&t=1&sid=AAA"
        );
        assert_eq!(
            strip_sid_tag("/socket.io/", Some("sid=AAA.abcdefgh&transport=websocket")).unwrap(),
            "/socket.io/?sid=AAA&transport=websocket"
        );
        assert_eq!(strip_sid_tag("/socket.io/", Some("EIO=4&sid=AAA")), None);
    }

    #[test]
    fn tags_eio4_open_packet() {
        let t = tag_handshake(EIO4.as_bytes(), "abcdefgh").unwrap();
        assert_eq!(t.sid, "kB5Oqd_dgt28MwpTAAAA");
        assert_eq!(t.heartbeat_ms, Some(45000));
        let s = String::from_utf8(t.body).unwrap();
        assert!(
            s.starts_with(r#"0{"sid":"kB5Oqd_dgt28MwpTAAAA.abcdefgh","upgrades""#),
            "{s}"
        );
        assert_eq!(s.len(), EIO4.len() + 9);
        // A following record (0x1e separated) is kept.
        let two = format!("{EIO4}\u{1e}40");
        let s = String::from_utf8(tag_handshake(two.as_bytes(), "abcdefgh").unwrap().body).unwrap();
        assert!(s.ends_with("}\u{1e}40"));
    }

    #[test]
    fn tags_eio3_and_fixes_the_length_prefix() {
        let packet = r#"0{"sid":"abcdefghij0123456789","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000}"#;
        let body = format!("{}:{}2:40", packet.len(), packet);
        let t = tag_handshake(body.as_bytes(), "abcdefgh").unwrap();
        let s = String::from_utf8(t.body).unwrap();
        let new_len = packet.len() + 9;
        assert!(
            s.starts_with(&format!(
                "{new_len}:0{{\"sid\":\"abcdefghij0123456789.abcdefgh\""
            )),
            "{s}"
        );
        assert!(s.ends_with("}2:40"), "{s}");
        assert_eq!(t.heartbeat_ms, Some(30000));
    }

    #[test]
    fn a_tagged_sid_always_splits_back() {
        // Found by tests/parsers_prop.rs: a 120..=128-byte sid was tagged, and its tagged
        // form (129..=137 bytes) was then refused by split_tag, so the tag was never stripped.
        for n in [1, 20, 119, 120, 128] {
            let sid = "s".repeat(n);
            let body = format!("0{{\"sid\":\"{sid}\"}}");
            match tag_handshake(body.as_bytes(), "abcdefgh") {
                Some(t) => assert_eq!(
                    split_tag(&format!("{}.abcdefgh", t.sid)),
                    Some((sid.as_str(), "abcdefgh"))
                ),
                None => assert!(n + 1 + TAG_LEN > MAX_SID_LEN, "{n}"),
            }
        }
    }

    #[test]
    fn huge_heartbeats_do_not_overflow() {
        // Found by tests/parsers_prop.rs: pingInterval + pingTimeout overflowed (a panic in
        // debug builds, a wrapped expiry in release).
        let t = tag_handshake(
            br#"0{"sid":"a","pingInterval":18446744073709551615,"pingTimeout":1}"#,
            "abcdefgh",
        )
        .unwrap();
        assert_eq!(t.heartbeat_ms, None);
        let t = tag_handshake(
            br#"0{"sid":"a","pingInterval":86400000,"pingTimeout":1}"#,
            "abcdefgh",
        )
        .unwrap();
        assert_eq!(t.heartbeat_ms, None, "over a day");
    }

    #[test]
    fn leaves_other_bodies_alone() {
        for body in [
            &b"not an open packet"[..],
            b"",
            b"0",
            b"0[]",
            b"\x1f\x8b\x08\x00gzip",
            b"13:0{\"sid\":\"a\"}",
            b"999:0{\"sid\":\"x\"}",
            "0{\"sid\":\"bad\\\"q\"}".as_bytes(),
            b"4hello",
            &[0xff, 0xfe, 0x00],
        ] {
            assert!(tag_handshake(body, "abcdefgh").is_none(), "{body:?}");
        }
    }
}
