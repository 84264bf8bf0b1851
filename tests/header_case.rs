//! Header names keep the spelling they arrived with, both ways, through the gateway: backends
//! and clients that (wrongly) match names case-sensitively keep working. Pingora keeps a case
//! entry only for names not in canonical Title-Case (vendor/pingora-http patch 15); this checks
//! both kinds, repeated names and the headers the gateway adds, on the wire.
mod common;
use common::*;

use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

/// A backend that records each raw request head and answers with a fixed raw head.
async fn raw_backend(answer: &'static [u8]) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(got) = read_head(&mut s).await {
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&got).into_owned());
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, heads)
}

/// The header names of a raw head, in order, as spelled.
fn names(head: &str) -> Vec<&str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_keep_their_spelling_both_ways() {
    let (addr, heads) = raw_backend(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nETag: \"v1\"\r\nx-lower-case: a\r\n\
          X-Powered-By: test\r\nSET-COOKIE: a=1\r\nSet-Cookie: b=2\r\nWWW-Authenticate: Basic\r\n\r\nok",
    )
    .await;
    let gw = Gateway::start(&format!(
        r#"
listeners: [ {{ address: "127.0.0.1:{{PORT}}" }} ]
admin: {{ address: "127.0.0.1:{{ADMIN}}" }}
upstreams: {{ p: {{ servers: [ {{ address: "{addr}" }} ] }} }}
routes: [ {{ upstream: p }} ]
"#
    ));
    // Twice on one connection: the second request reuses the pooled upstream connection too.
    let mut c = H1Conn::connect(gw.port).await.expect("connect");
    for _ in 0..2 {
        let r = c
            .request(
                "GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: t\r\nsec-ch-ua: \"b\"\r\n\
                 X-Custom-HEADER: 1\r\nX-Request-Id: 2\r\nDNT: 1\r\n\r\n",
            )
            .await
            .expect("response");
        assert_eq!(r.status, 200);
        let got: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
        for want in ["ETag", "x-lower-case", "X-Powered-By", "WWW-Authenticate"] {
            assert!(got.contains(&want), "{want} missing from {got:?}");
        }
        // A repeated name keeps one spelling per name (the non-canonical one), and all values.
        assert_eq!(
            r.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
                .map(|(n, v)| format!("{n}: {v}"))
                .collect::<Vec<_>>(),
            ["SET-COOKIE: a=1", "SET-COOKIE: b=2"]
        );
    }
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 2, "{heads:?}");
    for head in &heads {
        let n = names(head);
        for want in [
            "Host",
            "User-Agent",
            "sec-ch-ua",
            "X-Custom-HEADER",
            "X-Request-Id",
            "DNT",
            "X-Forwarded-For",
            "X-Forwarded-Proto",
        ] {
            assert!(n.contains(&want), "{want} missing from {n:?}\n{head}");
        }
    }
}
