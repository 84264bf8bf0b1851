//! Property tests for every parser the project wrote (issue 11, "Fuzzing"): the config loader
//! and compiler, the path normaliser, the router, the Socket.IO sid / tag / handshake-body
//! rewriting, the sticky cookie, `X-Forwarded-For` / `Forwarded`, and the PROXY protocol
//! header (whose parsing is the `ppp` crate's, inside the gateway's limits). The properties are in
//! `tests/parsers/checks.rs`, shared with the libFuzzer targets in `fuzz/` (`scripts/fuzz.sh`,
//! nightly); here they run on stable in the normal suite, 256 cases per property by default
//! (`PROPTEST_CASES=N` for more). Inputs that once failed are pinned as plain tests at the end.

#[path = "parsers/checks.rs"]
mod checks;

use gateway::affinity::TAG_ALPHABET;
use gateway::config::XffMode;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Map, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        // Failures are pinned by hand as plain tests below, not in files next to this one.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn chars(max: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..max).prop_map(String::from_iter)
}

/// Text made of `pieces` (the tokens a parser cares about) and stray characters.
fn soup(pieces: &'static [&'static str], max: usize) -> impl Strategy<Value = String> {
    vec(
        prop_oneof![
            4 => select(pieces).prop_map(String::from),
            1 => any::<char>().prop_map(String::from),
        ],
        0..max,
    )
    .prop_map(|v| v.concat())
}

fn tag() -> impl Strategy<Value = String> {
    vec(select(&TAG_ALPHABET[..]), 8).prop_map(|v| v.into_iter().map(char::from).collect())
}

// ---------------------------------------------------------------------------------------
// Config loader and compiler

const YAML_TOKENS: &[&str] = &[
    "listeners:",
    "upstreams:",
    "routes:",
    "server:",
    "admin:",
    "forwarded:",
    "\n",
    "\n  ",
    "\n    ",
    "\n      ",
    "- ",
    ": ",
    "{ ",
    " }",
    "[",
    "]",
    ", ",
    " ",
    "address:",
    "127.0.0.1:8080",
    "\"127.0.0.1:3000\"",
    "[::1]:0",
    "servers:",
    "weight:",
    "1000",
    "-1",
    "18446744073709551616",
    "match:",
    "path_prefix:",
    "path:",
    "host:",
    "\"*.a.com\"",
    "/api/",
    "upstream:",
    "a",
    "b",
    "respond:",
    "status:",
    "200",
    "body:",
    "redirect:",
    "to:",
    "rewrite:",
    "strip_prefix: true",
    "raw_path: true",
    "affinity:",
    "socketio: true",
    "cookie:",
    "name:",
    "secret:",
    "balance:",
    "consistent_hash",
    "least_conn",
    "hash_key:",
    "header:X",
    "cookie:c",
    "timeouts:",
    "idle:",
    "1h",
    "0s",
    "99999999999999999999d",
    "500ms",
    "health_check:",
    "http:",
    "interval:",
    "fails:",
    "passive:",
    "max_fails:",
    "trusted_proxies:",
    "10.0.0.0/8",
    "rfc7239: true",
    "x_forwarded_for: off",
    "rate_limit:",
    "rate:",
    "per:",
    "burst:",
    "key:",
    "max_body:",
    "8k",
    "1g",
    "threads:",
    "0",
    "grace_period_seconds:",
    "pid_file:",
    "/tmp/x.pid",
    "max_connections:",
    "filters:",
    "request_id",
    "request_headers:",
    "set:",
    "remove:",
    "X-A: b",
    "client:",
    "&a ",
    "*a",
    "<<: *a",
    "!!binary ",
    "!!str ",
    "~",
    "null",
    "'",
    "\"",
    "# c",
    "%YAML 1.2\n",
    "---\n",
    "...\n",
    "? ",
    "| ",
    "> ",
    "é",
    "\t",
    "\\",
    "\u{feff}",
    "enabled: false",
];

/// A generated config: the shape of the reference config, with valid values mostly and
/// invalid ones sometimes, so that both `Ok` and every kind of `Err` come out of `compile`.
fn config_value() -> impl Strategy<Value = Value> {
    const LISTEN: &[&str] = &[
        "127.0.0.1:8080",
        "127.0.0.1:8080",
        "127.0.0.1:8081",
        "[::1]:8443",
        "0.0.0.0:0",
        "nonsense",
        "127.0.0.1:99999",
        "",
    ];
    const SERVERS: &[&str] = &[
        "127.0.0.1:3000",
        "127.0.0.1:3001",
        "127.0.0.1:3002",
        "[::1]:3000",
        "127.0.0.1",
        ":80",
        "x:y",
        "10.0.0.1:0",
        "",
    ];
    const ROUTE_HOSTS: &[&str] = &[
        "a.com", "*.a.com", "B.A.COM", "[::1]", "*.", "*.*.a", "a b", "", " c.org ", "é.com",
    ];
    const PATHS: &[&str] = &["/", "/api/", "/socket.io/", "/a", "api", "", "/%2e", "/x y"];
    let listener = (
        select(LISTEN),
        any::<bool>(),
        option::of(select(vec![0u64, 4096, 1 << 30])),
    )
        .prop_map(|(a, redirect, rb)| {
            let mut m = Map::new();
            m.insert("address".into(), a.into());
            if redirect {
                m.insert("redirect_https".into(), true.into());
            }
            if let Some(rb) = rb {
                m.insert("read_buffer".into(), rb.into());
            }
            Value::Object(m)
        });
    let server = (
        select(SERVERS),
        option::of(select(vec![0u32, 1, 2, 1000, 1001])),
    )
        .prop_map(|(a, w)| match w {
            Some(w) => json!({ "address": a, "weight": w }),
            None => json!({ "address": a }),
        });
    let affinity = (
        select(vec![
            json!(true),
            json!(false),
            json!({ "path": "/rt/" }),
            json!({ "path": "rt" }),
        ]),
        option::of((
            select(vec!["gw", "gw_affinity", "a.b-c", "bad name", ""]),
            select(vec!["Lax", "Strict", "None", "lax"]),
            select(vec!["/", "/app", "x", "/a;b"]),
        )),
        option::of("[a-z]{0,8}"),
        select(vec![0u64, 1, 100_000]),
    )
        .prop_map(|(sio, cookie, secret, max)| {
            let mut m = Map::new();
            m.insert("socketio".into(), sio);
            if let Some((name, same_site, path)) = cookie {
                m.insert(
                    "cookie".into(),
                    json!({ "name": name, "same_site": same_site, "path": path, "ttl": "1h" }),
                );
            }
            if let Some(s) = secret {
                m.insert("secret".into(), s.into());
            }
            m.insert("max_sessions".into(), max.into());
            Value::Object(m)
        });
    let upstream = (
        vec(server, 0..4),
        select(vec![
            "round_robin",
            "random",
            "least_conn",
            "consistent_hash",
            "fastest",
        ]),
        select(vec![
            "client_ip",
            "header:X-User",
            "cookie:sid",
            "query:id",
            "header:",
            "x",
        ]),
        option::of(affinity),
        option::of(select(vec![
            json!({ "interval": "1s", "fails": 2 }),
            json!({ "http": { "path": "/health", "expect_status": 200 }, "interval": "2s" }),
            json!({ "interval": "0s" }),
            json!({ "http": { "path": "health" } }),
        ])),
        option::of(select(vec![
            json!({ "idle": "1h", "read": "60s" }),
            json!({ "idle": "10s", "read": "5s", "connect": "0s" }),
            json!({ "keepalive": "99999999999d" }),
        ])),
        option::of(select(vec![
            json!({ "max_fails": 3, "fail_timeout": "30s" }),
            json!({ "max_fails": 1, "fail_timeout": 0 }),
        ])),
        select(vec![0u64, 2, 100]),
    )
        .prop_map(
            |(servers, balance, hash_key, affinity, hc, timeouts, passive, retries)| {
                let mut m = Map::new();
                m.insert("servers".into(), servers.into());
                m.insert("balance".into(), balance.into());
                m.insert("hash_key".into(), hash_key.into());
                m.insert("retries".into(), retries.into());
                for (k, v) in [
                    ("affinity", affinity),
                    ("health_check", hc),
                    ("timeouts", timeouts),
                    ("passive", passive),
                ] {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                Value::Object(m)
            },
        );
    let action = select(vec![
        json!({ "upstream": "a" }),
        json!({ "upstream": "a" }),
        json!({ "upstream": "b" }),
        json!({ "upstream": "nope" }),
        json!({ "respond": { "status": 200, "body": "ok" } }),
        json!({ "respond": { "status": 150 } }),
        json!({ "respond": { "status": 404, "headers": { "X-A": "b", "bad name": "x" } } }),
        json!({ "redirect": { "to": "https://x.example/", "status": 301, "keep_path": true } }),
        json!({ "redirect": { "to": "", "status": 200 } }),
        json!({ "upstream": "a", "respond": { "status": 200 } }),
        json!({}),
    ]);
    let route = (
        option::of(vec(select(ROUTE_HOSTS), 0..3)),
        option::of((any::<bool>(), select(PATHS))),
        action,
        any::<bool>(),
        option::of(select(vec!["/v2/", "", "v2"])),
        any::<bool>(),
        option::of(select(vec![
            json!({ "rate": 10, "burst": 20 }),
            json!({ "rate": 0, "per": "0s", "key": "header:bad name" }),
            json!({ "rate": 1000001, "per": "2d", "burst": 0, "key": "cookie:", "status": 200 }),
            json!({ "rate": 5, "per": "1ms", "key": "cookie:s" }),
        ])),
        option::of(select(vec![
            json!("1m"),
            json!(0),
            json!("5k"),
            json!("1x"),
            json!(-1),
        ])),
        option::of(select(vec![
            json!({ "set": { "X-A": "b" }, "add": { "X-B": "c" }, "remove": ["X-C"] }),
            json!({ "set": { "bad name": "x" }, "remove": [""] }),
        ])),
        option::of(select(vec![
            json!([{ "name": "request_id" }]),
            json!([{ "name": "nope" }]),
        ])),
    )
        .prop_map(
            |(hosts, path, action, strip, rewrite, raw, rate, max_body, headers, filters)| {
                let mut m = action.as_object().cloned().unwrap_or_default();
                let mut matches = Map::new();
                if let Some(h) = hosts {
                    matches.insert("host".into(), h.into());
                }
                if let Some((exact, p)) = path {
                    matches.insert(if exact { "path" } else { "path_prefix" }.into(), p.into());
                }
                m.insert("match".into(), Value::Object(matches));
                if strip {
                    m.insert("strip_prefix".into(), true.into());
                }
                if let Some(r) = rewrite {
                    m.insert("rewrite".into(), r.into());
                }
                if raw {
                    m.insert("raw_path".into(), true.into());
                }
                for (k, v) in [
                    ("rate_limit", rate),
                    ("max_body", max_body),
                    ("request_headers", headers),
                    ("filters", filters),
                ] {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                Value::Object(m)
            },
        );
    let server_section = option::of(select(vec![
        json!({ "threads": 2 }),
        json!({ "threads": 0 }),
        json!({ "threads": 257, "grace_period_seconds": 99999 }),
        json!({ "pid_file": "relative.pid" }),
        json!({ "max_connections": 0 }),
        json!({ "unknown_key": 1 }),
    ]));
    let forwarded = option::of((
        vec(
            select(vec![
                "10.0.0.0/8",
                "::1",
                "1.2.3.4/33",
                "garbage",
                "0.0.0.0/0",
                "fe80::/10",
            ]),
            0..3,
        ),
        select(vec!["append", "replace", "off", "sometimes"]),
        any::<bool>(),
    ));
    (
        vec(listener, 0..3),
        vec(
            (select(vec!["a", "b", "c", "bad name", "é"]), upstream),
            0..3,
        ),
        vec(route, 0..6),
        server_section,
        forwarded,
        any::<bool>(),
    )
        .prop_map(|(listeners, upstreams, routes, server, forwarded, admin)| {
            let mut m = Map::new();
            m.insert("listeners".into(), listeners.into());
            m.insert(
                "upstreams".into(),
                Value::Object(
                    upstreams
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v))
                        .collect(),
                ),
            );
            m.insert("routes".into(), routes.into());
            if let Some(s) = server {
                m.insert("server".into(), s);
            }
            if let Some((trusted, xff, rfc)) = forwarded {
                m.insert(
                    "forwarded".into(),
                    json!({ "trusted_proxies": trusted, "x_forwarded_for": xff, "rfc7239": rfc }),
                );
            }
            if admin {
                m.insert("admin".into(), json!({ "address": "127.0.0.1:8080" }));
            }
            Value::Object(m)
        })
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn config_loader_on_any_bytes(b in bytes(4096)) {
        checks::config_text(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn config_loader_on_yaml_soup(text in soup(YAML_TOKENS, 300)) {
        checks::config_text(&text);
    }

    #[test]
    fn config_compiler_on_generated_configs(v in config_value(), cut in any::<prop::sample::Index>()) {
        let yaml = serde_yaml::to_string(&v).unwrap();
        checks::config_text(&yaml);
        // The same text cut short anywhere (a half-written file).
        let mut at = cut.index(yaml.len() + 1);
        while !yaml.is_char_boundary(at) {
            at -= 1;
        }
        checks::config_text(&yaml[..at]);
    }
}

// ---------------------------------------------------------------------------------------
// Path normaliser

const PATH_PIECES: &[&str] = &[
    "/", "/", "/", ".", "..", "%", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "\\", ";", ";x=1",
    "%3b", "%00", "%zz", "%4", "%41", "%7e", "%c3%a9", "é", "a", "b", "admin", "~", "-", "_", "?",
    "#", "%25", "%2", "%%",
];

/// The parts of an equivalence test: segments and, between them, separators that all mean
/// one `/` (duplicate slashes, `.` segments, `x/..` detours, encoded dots).
const SEPARATORS: &[&str] = &[
    "/",
    "/",
    "//",
    "/./",
    "/zz/../",
    "/%2e/",
    "/zz/%2e%2E/",
    "///./",
    "/zz/.%2e/",
];

fn encode_some(seg: &str, mask: &[bool]) -> String {
    seg.bytes()
        .zip(mask.iter().cycle())
        .map(|(b, &enc)| match (enc, b.is_ascii_lowercase()) {
            (true, true) => format!("%{b:02x}"),
            (true, false) => format!("%{b:02X}"),
            (false, _) => char::from(b).to_string(),
        })
        .collect()
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn normalize_on_any_string(s in chars(512)) {
        checks::normalized(&s);
        checks::normalized(&format!("/{s}"));
    }

    #[test]
    fn normalize_on_path_soup(s in soup(PATH_PIECES, 64), slash in any::<bool>()) {
        checks::normalized(&if slash { format!("/{s}") } else { s });
    }

    /// Every spelling of a path normalises to the same path: its plain form.
    #[test]
    fn normalize_gives_one_form_to_every_spelling(
        segs in vec("[a-zA-Z0-9_~.-]{1,6}".prop_filter("a name", |s| s != "." && s != ".."), 1..6),
        seps in vec(select(SEPARATORS), 6),
        lead in select(vec!["", "/", "/.", "/zz/..", "/%2E"]),
        trailing in select(vec!["", "/", "//", "/./", "/.", "/zz/.."]),
        mask in vec(any::<bool>(), 1..8),
    ) {
        let plain = format!(
            "/{}{}",
            segs.join("/"),
            if trailing.is_empty() { "" } else { "/" }
        );
        let got = gateway::proxy::normalize::normalize(&plain);
        prop_assert_eq!(got.as_deref(), Ok(plain.as_str()));
        let mut spelled = String::from(lead);
        for (i, seg) in segs.iter().enumerate() {
            spelled.push_str(if i == 0 { "/" } else { seps[i] });
            spelled.push_str(&encode_some(seg, &mask));
        }
        spelled.push_str(trailing);
        let got = gateway::proxy::normalize::normalize(&spelled);
        prop_assert_eq!(got.as_deref(), Ok(plain.as_str()), "{:?}", spelled);
        checks::normalized(&spelled);
    }
}

// ---------------------------------------------------------------------------------------
// Router

const ROUTE_HOSTS: &[&str] = &[
    "a.com",
    "b.a.com",
    "A.Com",
    "org",
    "x.org",
    "*.a.com",
    "*.com",
    "*.B.a.com",
    "*.org",
    "[::1]",
    "127.0.0.1",
    "é.com",
    " c.org ",
];
const REQUEST_HOSTS: &[&str] = &[
    "a.com",
    "b.a.com",
    "x.b.a.com",
    "z.a.com",
    "org",
    "x.org",
    "c.org",
    "com",
    "[::1]",
    "127.0.0.1",
    "é.com",
    "É.com",
    "",
    ".",
    "a.com.",
    ".a.com",
    "a.org.com",
    "[::1",
];

fn route_spec() -> impl Strategy<Value = checks::RouteSpec> {
    (
        vec(select(ROUTE_HOSTS).prop_map(String::from), 0..3),
        option::of((any::<bool>(), "/[ab/.]{0,5}")),
    )
        .prop_map(|(hosts, path)| checks::RouteSpec { hosts, path })
}

fn request_host() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (
            select(REQUEST_HOSTS),
            vec(any::<bool>(), 1..6),
            select(vec!["", "", ":8080", ":", ":x", ".", ".:80", ":80:80"]),
        )
            .prop_map(|(h, upper, suffix)| {
                let h: String = h
                    .chars()
                    .zip(upper.iter().cycle())
                    .map(|(c, &u)| if u { c.to_ascii_uppercase() } else { c })
                    .collect();
                format!("{h}{suffix}")
            }),
        1 => chars(40),
        1 => "[a-z.]{250,260}",
    ]
}

fn request_path() -> impl Strategy<Value = String> {
    prop_oneof![6 => "[ab/.]{0,8}", 1 => chars(40)]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn router_agrees_with_the_reference(
        routes in vec(route_spec(), 0..12),
        requests in vec((request_host(), request_path()), 1..32),
    ) {
        checks::router(&routes, &requests);
    }

    #[test]
    fn router_on_fuzzer_text(b in bytes(1024)) {
        checks::router_text(&String::from_utf8_lossy(&b));
    }
}

// ---------------------------------------------------------------------------------------
// Socket.IO

const QUERY_PIECES: &[&str] = &[
    "sid=",
    "sid",
    "EIO=4",
    "EIO=3",
    "transport=polling",
    "transport=websocket",
    "&",
    "&",
    "=",
    ".",
    "abcdefgh",
    "2345abcd",
    "ABCDEFGH",
    "t=Nx1",
    "kB5Oqd_dgt28MwpTAAAA",
    "%26",
    "",
];

const BODY_PIECES: &[&str] = &[
    "0",
    "0{",
    "{",
    "}",
    "\"sid\":\"",
    "\"sid\":",
    "\"",
    "\\",
    ".",
    ",",
    ":",
    "\u{1e}",
    "40",
    "kB5Oqd_dgt28MwpTAAAA",
    "\"pingInterval\":",
    "\"pingTimeout\":",
    "25000",
    "20000",
    "18446744073709551615",
    "\"upgrades\":[\"websocket\"]",
    "97:",
    "2:",
    "é",
    "\u{10348}",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        chars(16).prop_map(Value::from),
        vec("[a-z]{0,9}", 0..3).prop_map(Value::from),
        Just(Value::Null),
    ]
}

/// An engine.io open packet: `0` and a JSON object with a `sid`, maybe the heartbeat fields
/// (huge ones too) and other fields.
fn open_packet() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            "[A-Za-z0-9_-]{20}",
            "[A-Za-z0-9_-]{1,130}",
            "[A-Za-z0-9_.é\"\\\\-]{0,24}",
        ],
        option::of((
            prop_oneof![any::<u64>(), 1u64..100_000],
            prop_oneof![any::<u64>(), 1u64..100_000],
        )),
        vec(("[a-zA-Z]{1,12}", json_leaf()), 0..4),
    )
        .prop_map(|(sid, beat, extra)| {
            let mut m = Map::new();
            for (k, v) in extra {
                m.insert(k, v);
            }
            m.insert("sid".into(), sid.into());
            if let Some((a, b)) = beat {
                m.insert("pingInterval".into(), a.into());
                m.insert("pingTimeout".into(), b.into());
            }
            format!("0{}", Value::Object(m))
        })
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn sid_query_on_any_query(q in prop_oneof![soup(QUERY_PIECES, 24), chars(256)], path in select(vec!["/socket.io/", "/", ""])) {
        checks::sid_query(path, &q);
    }

    #[test]
    fn sid_tag_round_trips(
        base in prop_oneof!["[A-Za-z0-9_-]{20}", "[A-Za-z0-9_.=%~-]{0,140}", chars(24)],
        tag in tag(),
        before in vec("[a-zA-Z0-9_=.%-]{0,12}", 0..4),
        after in vec("[a-zA-Z0-9_=.%-]{0,12}", 0..4),
    ) {
        checks::tag_round_trip(&base, &tag, &before, &after);
    }

    #[test]
    fn handshake_tagging_on_any_body(
        body in prop_oneof![
            bytes(2048),
            soup(BODY_PIECES, 48).prop_map(String::into_bytes),
            (open_packet(), chars(8)).prop_map(|(p, junk)| format!("{}:{p}{junk}", p.len()).into_bytes()),
        ],
        tag in tag(),
    ) {
        checks::handshake(&body, &tag);
    }

    #[test]
    fn handshake_tagging_on_open_packets(
        packet in open_packet(),
        tag in tag(),
        eio3 in any::<bool>(),
        rest in select(vec!["", "40", "2:40", "\u{1e}"]),
    ) {
        checks::handshake_json(&packet, &tag, eio3, rest);
    }
}

// ---------------------------------------------------------------------------------------
// Sticky cookie

const COOKIE_PIECES: &[&str] = &[
    "gw",
    "gw_affinity",
    "=",
    "; ",
    ";",
    " ",
    "\t",
    "abcdefgh",
    "io=",
    "gw=",
    "\"",
    ",",
    "é",
];

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn cookie_header_on_any_lines(
        lines in vec(prop_oneof![bytes(256), soup(COOKIE_PIECES, 24).prop_map(String::into_bytes)], 0..4),
        name in prop_oneof![select(vec!["gw", "gw_affinity", "io"]).prop_map(String::from), chars(8)],
    ) {
        checks::cookie_lines(&lines, &name);
    }

    #[test]
    fn sticky_cookie_round_trips(
        backends in 1usize..6,
        name in "[A-Za-z0-9_.-]{1,16}",
        same_site in select(vec!["Lax", "Strict", "None"]),
        secret in option::of("[a-zA-Z0-9 ]{0,12}"),
        idx in any::<usize>(),
        tls in any::<bool>(),
        others in vec(("[A-Za-z0-9_.-]{1,8}", "[a-zA-Z0-9!#$%&'()*+./:<>?@^_`{|}~=-]{0,12}"), 0..5),
        position in any::<usize>(),
        foreign in tag(),
    ) {
        checks::sticky_cookie(backends, &name, same_site, secret.as_deref(), idx, tls, &others, position, &foreign);
    }
}

// ---------------------------------------------------------------------------------------
// X-Forwarded-For and Forwarded

const FORWARDED_PIECES: &[&str] = &[
    "for=",
    "For=",
    "6.6.6.6",
    "10.9.9.9",
    "6.6.6.6:80",
    "[2001:db8::6]",
    "2001:db8::6",
    "unknown",
    "_x",
    ";proto=http",
    ";host=",
    "by=",
    "\"",
    "\\",
    ",",
    ", ",
    ";",
    " ",
    "=",
    "[",
    "]",
    ":",
    "\t",
    ", for=",
    "\"[",
    "]\"",
    "\"6.6.6.6\"",
    "_",
    "::ffff:6.6.6.6",
    "é",
];

fn untrusted_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
        select(vec![[6u8, 6, 6, 6], [203, 0, 113, 7], [127, 0, 0, 1]]).prop_map(IpAddr::from),
    ]
    .prop_filter("untrusted", |ip| {
        !checks::policy(false, XffMode::Append).is_trusted(*ip)
    })
}

fn trusted_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v & 0x00ff_ffff | 0x0a00_0000))),
        any::<u16>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(0xc0a8_0000 | u32::from(v)))),
        any::<u128>()
            .prop_map(|v| IpAddr::V6(Ipv6Addr::from(v & (u128::MAX >> 8) | (0xfd << 120)))),
        any::<u32>().prop_map(|v| IpAddr::V6(
            Ipv4Addr::from(v & 0x00ff_ffff | 0x0a00_0000).to_ipv6_mapped()
        )),
    ]
}

fn header_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => soup(FORWARDED_PIECES, 24).prop_map(String::into_bytes),
        1 => vec(untrusted_ip().prop_map(|ip| ip.to_string()), 0..4).prop_map(|v| v.join(", ").into_bytes()),
        1 => bytes(128),
    ]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn untrusted_peer_is_the_client(
        peer in untrusted_ip(),
        headers in vec((
            select(vec![
                "X-Forwarded-For", "Forwarded", "X-Real-IP", "X_Real_IP", "True-Client-IP",
                "X-Client-IP", "CF-Connecting-IP", "Client-IP", "X_Forwarded_For",
                "X-Forwarded-Proto", "X-Forwarded-Port", "X-Forwarded-Host", "Cookie", "Via",
            ]),
            header_line(),
        ), 0..6),
        rfc7239 in any::<bool>(),
    ) {
        checks::untrusted_peer(peer, &headers, rfc7239);
    }

    #[test]
    fn trusted_proxies_are_never_fooled(
        client in untrusted_ip(),
        hops in vec(trusted_ip(), 0..3),
        peer in trusted_ip(),
        lines in vec(header_line(), 0..3),
        same_line in any::<bool>(),
    ) {
        checks::trusted_chain(client, &hops, peer, &lines, same_line);
    }

    #[test]
    fn client_ip_on_any_forwarded_lines(
        peer in trusted_ip(),
        xff in vec(header_line(), 0..3),
        fwd in vec(header_line(), 0..3),
    ) {
        checks::any_forwarded_lines(peer, &xff, &fwd);
    }
}

// ---------------------------------------------------------------------------------------
// PROXY protocol header

const PROXY_PIECES: &[&str] = &[
    "PROXY ",
    "TCP4 ",
    "TCP6 ",
    "UNKNOWN",
    "PROXY TCP4 1.2.3.4 5.6.7.8 1 2",
    "\r\n",
    "\r",
    "\n",
    " ",
    "0",
    "1",
    "65535",
    "65536",
    "01",
    "1.2.3.4",
    "::1",
    "::ffff:1.2.3.4",
    "255.255.255.255",
    "\r\n\r\n\0\r\nQUIT\n",
    "\u{21}\u{11}\0\u{c}",
    "\u{20}\0\0\0",
    "\u{21}\u{21}\0\u{24}",
    "\u{10}\0",
    "\u{ff}",
];

fn socket_addr() -> impl Strategy<Value = std::net::SocketAddr> {
    (
        prop_oneof![
            any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        ],
        any::<u16>(),
    )
        .prop_map(|(ip, port)| std::net::SocketAddr::new(ip, port))
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn proxy_header_on_any_bytes(
        data in prop_oneof![
            3 => soup(PROXY_PIECES, 12).prop_map(String::into_bytes),
            1 => bytes(64).prop_map(|b| [&b"\r\n\r\n\0\r\nQUIT\n"[..], &b[..]].concat()),
            1 => bytes(160),
        ],
    ) {
        checks::proxy_header_bytes(&data);
    }

    #[test]
    fn proxy_header_round_trip(
        v2 in any::<bool>(),
        src in socket_addr(),
        dst in socket_addr(),
        rest in bytes(64),
    ) {
        checks::proxy_header_round_trip(v2, src, dst, &rest);
        let mut header = gateway::proxy_protocol::encode(
            if v2 { gateway::proxy_protocol::Version::V2 } else { gateway::proxy_protocol::Version::V1 },
            src,
            dst,
        );
        header.extend_from_slice(&rest);
        checks::proxy_header_bytes(&header);
    }
}

// ---------------------------------------------------------------------------------------
// Regression inputs: what the fuzzers and the properties above found, pinned as plain tests
// (the same inputs are in fuzz/regressions/<target>/).

/// pingInterval + pingTimeout overflowed `u64`: a panic in debug builds, a wrapped session
/// expiry in release (found by `handshake_tagging_on_open_packets`). Now: no heartbeat.
#[test]
fn regression_heartbeat_overflow() {
    checks::handshake_json(
        r#"0{"pingInterval":15315382903122588413,"pingTimeout":3131361170586963203,"sid":"0aAa-AaAa_AA_AAa0AAa"}"#,
        "aaaaaaaa",
        false,
        "",
    );
    checks::handshake(
        b"0{\"sid\":\"a\",\"pingInterval\":18446744073709551615,\"pingTimeout\":1}",
        "abcdefgh",
    );
}

/// A sid of 120 to 128 bytes was tagged, but its tagged form (over `MAX_SID_LEN`) was then
/// refused by `split_tag`: the tag was never stripped and the session broke (found by
/// `handshake_tagging_on_open_packets`). Now such a sid is not tagged (the sid table pins it).
#[test]
fn regression_long_sid_is_not_tagged_beyond_what_splits() {
    for n in [119, 120, 127, 128] {
        let packet = format!("0{{\"sid\":\"{}\",\"upgrades\":[]}}", "A".repeat(n));
        checks::handshake_json(&packet, "aaaaaaaa", false, "");
        checks::handshake_json(&packet, "aaaaaaaa", true, "2:40");
        checks::handshake(packet.as_bytes(), "abcdefgh");
    }
}
