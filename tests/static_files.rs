//! `routes[].static` through the real gateway binary: index files, MIME types, validators and
//! 304, ranges, HEAD, precompressed siblings, 403 / 404 / 405, path traversal and symlinks out
//! of the root refused, a large file streamed intact (and without being read into memory),
//! and the Socket.IO docs' nginx recipe: `/socket.io/` proxied, everything else static.

mod common;
use common::*;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

const INDEX: &str = "<!doctype html><h1>home</h1>\n";
const CSS: &str = "body { color: #333 }\n";
const TEXT: &str = "hello precompressed world, hello precompressed world\n";
const BIG: usize = 8 << 20;

/// Deterministic, non-repeating-looking bytes (so a misplaced chunk is detected).
fn pattern(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// A web root next to a directory outside it:
/// `root/{index.html, style.css, app.js, logo.svg, pixel.png, data.json, text.txt{,.gz,.br},
/// big.bin, huge.bin (64 MiB, sparse), sub/a.txt, docs/index.html, alias.txt -> text.txt,
/// escape.txt -> ../outside/secret.txt, escape_dir -> ../outside}`.
struct Site {
    dir: PathBuf,
    root: PathBuf,
    big: Vec<u8>,
}

impl Site {
    fn new() -> Site {
        let dir = unique_temp_dir("static-files");
        let root = dir.join("root");
        let outside = dir.join("outside");
        for d in [
            &root,
            &outside,
            &root.join("sub"),
            &root.join("docs"),
            &root.join("private"),
        ] {
            std::fs::create_dir_all(d).unwrap();
        }
        let w = |p: &str, data: &[u8]| std::fs::write(root.join(p), data).unwrap();
        w("index.html", INDEX.as_bytes());
        w("style.css", CSS.as_bytes());
        w("app.js", b"console.log('hi');\n");
        w("logo.svg", b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>\n");
        w("pixel.png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
        w("data.json", b"{\"a\":1}\n");
        w("text.txt", TEXT.as_bytes());
        w("text.txt.gz", &gzip(TEXT.as_bytes()));
        w("text.txt.br", b"not really brotli, but the .br sibling\n");
        w("sub/a.txt", b"a\n");
        w("docs/index.html", b"<h1>docs</h1>\n");
        w("private/secret.html", b"PRIVATE SECRET\n");
        let big = pattern(BIG);
        w("big.bin", &big);
        let huge = std::fs::File::create(root.join("huge.bin")).unwrap();
        huge.set_len(64 << 20).unwrap();
        std::fs::write(outside.join("secret.txt"), b"TOP SECRET\n").unwrap();
        std::os::unix::fs::symlink("text.txt", root.join("alias.txt")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("escape.txt")).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("escape_dir")).unwrap();
        Site { dir, root, big }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The Socket.IO docs' nginx recipe (`location /socket.io/ { proxy_pass ... }` with
/// `root /var/www/html` for the rest), plus a prefix route with `strip_prefix`.
fn config(root: &Path, backend: &Backend) -> String {
    r#"
listeners: [ { address: "127.0.0.1:{PORT}" } ]
admin: { address: "127.0.0.1:{ADMIN}" }
upstreams:
  realtime: { servers: [ { address: "BACKEND" } ] }
routes:
  - match: { path_prefix: /private/ }
    respond: { status: 403, body: "denied\n" }
  - match: { path_prefix: /socket.io/ }
    upstream: realtime
  - match: { path_prefix: /assets/ }
    strip_prefix: true
    static: { root: "ROOT" }
    response_headers: { set: { X-Static: assets } }
  - static: { root: "ROOT", precompressed: true, max_age: 1h }
"#
    .replace("ROOT", &root.display().to_string())
    .replace("BACKEND", &backend.addr.to_string())
}

async fn start() -> (Site, Backend, Gateway) {
    let site = Site::new();
    let backend = Backend::start("sio").await;
    let gw = Gateway::start(&config(&site.root, &backend));
    (site, backend, gw)
}

/// A raw request line as sent (no normalisation by a client library).
async fn raw(port: u16, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
    let mut r = format!("{method} {target} HTTP/1.1\r\nHost: site\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    http(port, &r).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_types_and_errors() {
    let (site, _b, gw) = start().await;
    let r = get(gw.port, "site", "/").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), INDEX);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("cache-control"), Some("max-age=3600"));
    assert_eq!(r.header("content-length"), Some(&*INDEX.len().to_string()));

    for (path, ct) in [
        ("/index.html", "text/html; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/logo.svg", "image/svg+xml"),
        ("/pixel.png", "image/png"),
        ("/data.json", "application/json; charset=utf-8"),
        ("/big.bin", "application/octet-stream"),
    ] {
        let r = send(gw.port, "HEAD", "site", path, &[], b"").await;
        assert_eq!(
            (r.status, r.header("content-type")),
            (200, Some(ct)),
            "{path}"
        );
    }

    // A directory: its index with the slash, a redirect to the slash without it.
    let r = get(gw.port, "site", "/docs/").await;
    assert_eq!((r.status, r.text().as_str()), (200, "<h1>docs</h1>\n"));
    let r = get(gw.port, "site", "/docs?x=1").await;
    assert_eq!((r.status, r.header("location")), (301, Some("/docs/?x=1")));
    // No index: no listing.
    let r = get(gw.port, "site", "/sub/").await;
    assert_eq!(r.status, 403);
    assert!(!r.text().contains("a.txt"), "{}", r.text());
    assert_eq!(get(gw.port, "site", "/sub/a.txt").await.text(), "a\n");
    assert_eq!(get(gw.port, "site", "/missing.html").await.status, 404);
    assert_eq!(get(gw.port, "site", "/sub/missing/x").await.status, 404);
    assert_eq!(get(gw.port, "site", "/style.css/").await.status, 404);
    // Escapes are decoded for the file name.
    std::fs::write(site.root.join("my file.txt"), b"spaced\n").unwrap();
    assert_eq!(
        get(gw.port, "site", "/my%20file.txt").await.text(),
        "spaced\n"
    );

    // Only GET and HEAD.
    for m in ["POST", "PUT", "DELETE"] {
        let r = send(gw.port, m, "site", "/style.css", &[], b"x=1").await;
        assert_eq!(r.status, 405, "{m}");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }

    // HEAD: the GET headers, no body.
    let r = send(gw.port, "HEAD", "site", "/style.css", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(&*CSS.len().to_string()));
    assert!(r.header("etag").is_some() && r.header("last-modified").is_some());
    assert!(r.body.is_empty());

    // strip_prefix applies before the lookup; the route's response_headers apply.
    let r = get(gw.port, "site", "/assets/style.css").await;
    assert_eq!((r.status, r.text().as_str()), (200, CSS));
    assert_eq!(r.header("x-static"), Some("assets"));
    assert_eq!(r.header("cache-control"), None, "no max_age on that route");
    assert_eq!(get(gw.port, "site", "/assets/").await.text(), INDEX);
    assert_eq!(
        get(gw.port, "site", "/assets/nope")
            .await
            .header("x-static"),
        Some("assets")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validators_and_304_both_ways() {
    let (site, _b, gw) = start().await;
    let r = get(gw.port, "site", "/style.css").await;
    let etag = r.header("etag").unwrap().to_string();
    let lm = r.header("last-modified").unwrap().to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with(&format!("-{:x}\"", CSS.len())),
        "{etag}"
    );

    let r = get_with(gw.port, "site", "/style.css", &[("If-None-Match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), Some(&*etag));
    assert_eq!(r.header("cache-control"), Some("max-age=3600"));
    let r = get_with(
        gw.port,
        "site",
        "/style.css",
        &[("If-None-Match", &format!("\"x\", W/{etag}"))],
    )
    .await;
    assert_eq!(r.status, 304, "weak comparison, lists");
    let r = get_with(gw.port, "site", "/style.css", &[("If-Modified-Since", &lm)]).await;
    assert_eq!(r.status, 304);
    let r = send(
        gw.port,
        "HEAD",
        "site",
        "/style.css",
        &[("If-None-Match", &etag)],
        b"",
    )
    .await;
    assert_eq!(r.status, 304);

    // The other way: a changed validator gets the file.
    let r = get_with(
        gw.port,
        "site",
        "/style.css",
        &[("If-None-Match", "\"stale-1\"")],
    )
    .await;
    assert_eq!((r.status, r.text().as_str()), (200, CSS));
    let old = "Mon, 01 Jan 2001 00:00:00 GMT";
    let r = get_with(gw.port, "site", "/style.css", &[("If-Modified-Since", old)]).await;
    assert_eq!((r.status, r.text().as_str()), (200, CSS));
    // If-None-Match wins over a matching If-Modified-Since.
    let h = [
        ("If-None-Match", "\"stale-1\""),
        ("If-Modified-Since", &*lm),
    ];
    assert_eq!(
        get_with(gw.port, "site", "/style.css", &h).await.status,
        200
    );
    // A file rewritten with another length gets a new ETag.
    std::fs::write(
        site.root.join("style.css"),
        "body { color: red }\n/* more */\n",
    )
    .unwrap();
    let r = get_with(gw.port, "site", "/style.css", &[("If-None-Match", &etag)]).await;
    assert_eq!(r.status, 200);
    assert_ne!(r.header("etag"), Some(&*etag));
    // If-Match / If-Unmodified-Since: 412.
    let r = get_with(gw.port, "site", "/style.css", &[("If-Match", &etag)]).await;
    assert_eq!(r.status, 412);
    let r = get_with(
        gw.port,
        "site",
        "/style.css",
        &[("If-Unmodified-Since", old)],
    )
    .await;
    assert_eq!(r.status, 412);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_206_416_and_if_range() {
    let (site, _b, gw) = start().await;
    let len = site.big.len();
    let etag = get_with(gw.port, "site", "/big.bin", &[("Range", "bytes=0-0")])
        .await
        .header("etag")
        .unwrap()
        .to_string();

    let r = get_with(gw.port, "site", "/big.bin", &[("Range", "bytes=100-199")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.header("content-range"),
        Some(&*format!("bytes 100-199/{len}"))
    );
    assert_eq!(r.header("content-length"), Some("100"));
    assert_eq!(r.body, site.big[100..200]);
    let r = get_with(gw.port, "site", "/big.bin", &[("Range", "bytes=-70000")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(
        r.body,
        site.big[len - 70000..],
        "suffix range across chunks"
    );
    let r = get_with(gw.port, "site", "/big.bin", &[("Range", "bytes=8388000-")]).await;
    assert_eq!((r.status, &r.body[..]), (206, &site.big[8388000..]));

    let r = get_with(
        gw.port,
        "site",
        "/big.bin",
        &[("Range", &format!("bytes={len}-"))],
    )
    .await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some(&*format!("bytes */{len}")));

    // If-Range: the current ETag gets the range, a stale one the whole file.
    let h = [("Range", "bytes=0-9"), ("If-Range", &*etag)];
    let r = get_with(gw.port, "site", "/big.bin", &h).await;
    assert_eq!((r.status, &r.body[..]), (206, &site.big[..10]));
    let h = [("Range", "bytes=0-9"), ("If-Range", "\"0-0\"")];
    let r = get_with(gw.port, "site", "/big.bin", &h).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), len);

    // Several ranges: the whole file (documented choice); a malformed header is ignored.
    let r = get_with(gw.port, "site", "/style.css", &[("Range", "bytes=0-1,4-5")]).await;
    assert_eq!((r.status, r.text().as_str()), (200, CSS));
    let r = get_with(gw.port, "site", "/style.css", &[("Range", "lines=1-2")]).await;
    assert_eq!((r.status, r.text().as_str()), (200, CSS));

    // A range of a precompressed file is a range of the identity file.
    let h = [("Range", "bytes=0-4"), ("Accept-Encoding", "gzip, br")];
    let r = get_with(gw.port, "site", "/text.txt", &h).await;
    assert_eq!((r.status, r.text().as_str()), (206, "hello"));
    assert_eq!(r.header("content-encoding"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn precompressed_siblings_only_when_accepted() {
    let (site, _b, gw) = start().await;
    let r = get_with(
        gw.port,
        "site",
        "/text.txt",
        &[("Accept-Encoding", "gzip, deflate")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("vary"), Some("Accept-Encoding"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(gunzip(&r.body), TEXT.as_bytes());

    let r = get_with(
        gw.port,
        "site",
        "/text.txt",
        &[("Accept-Encoding", "gzip, deflate, br")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(
        r.body,
        std::fs::read(site.root.join("text.txt.br")).unwrap()
    );
    let r = get_with(
        gw.port,
        "site",
        "/text.txt",
        &[("Accept-Encoding", "br;q=0.5, gzip")],
    )
    .await;
    assert_eq!(
        r.header("content-encoding"),
        Some("gzip"),
        "q values decide"
    );
    let r = send(
        gw.port,
        "HEAD",
        "site",
        "/text.txt",
        &[("Accept-Encoding", "gzip")],
        b"",
    )
    .await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    let gz_len = std::fs::metadata(site.root.join("text.txt.gz"))
        .unwrap()
        .len();
    assert_eq!(r.header("content-length"), Some(&*gz_len.to_string()));

    for ae in [
        None,
        Some("identity"),
        Some("gzip;q=0, br;q=0"),
        Some("deflate"),
    ] {
        let h: Vec<(&str, &str)> = ae.iter().map(|v| ("Accept-Encoding", *v)).collect();
        let r = get_with(gw.port, "site", "/text.txt", &h).await;
        assert_eq!(r.header("content-encoding"), None, "{ae:?}");
        assert_eq!(r.text(), TEXT, "{ae:?}");
        assert_eq!(r.header("vary"), Some("Accept-Encoding"), "{ae:?}");
    }
    // A file without siblings, and a route without `precompressed`.
    let r = get_with(
        gw.port,
        "site",
        "/style.css",
        &[("Accept-Encoding", "gzip, br")],
    )
    .await;
    assert_eq!(
        (r.header("content-encoding"), r.text().as_str()),
        (None, CSS)
    );
    let r = get_with(
        gw.port,
        "site",
        "/assets/text.txt",
        &[("Accept-Encoding", "gzip")],
    )
    .await;
    assert_eq!(
        (r.header("content-encoding"), r.header("vary")),
        (None, None)
    );
    assert_eq!(r.text(), TEXT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_and_symlinks_out_of_the_root_are_refused() {
    let (_site, _b, gw) = start().await;
    // Refused by normalisation before routing.
    for target in [
        "/%2e%2e/outside/secret.txt",
        "/..%2foutside/secret.txt",
        "/..%2Foutside%2Fsecret.txt",
        "/a/../../outside/secret.txt",
        "/sub/%2E%2E/%2e%2e/outside/secret.txt",
        "/sub/..\\..\\outside\\secret.txt",
        "/assets/..%2F..%2Foutside/secret.txt",
        "/text.txt%00.png",
    ] {
        let r = raw(gw.port, "GET", target, &[]).await;
        assert_eq!(r.status, 400, "{target}");
        assert!(!r.text().contains("SECRET"), "{target}");
    }
    // A deny route has no other spelling: an encoded slash is data to the router, and so
    // never a separator to the file lookup.
    assert_eq!(
        get(gw.port, "site", "/private/secret.html").await.status,
        403
    );
    for target in [
        "/private%2Fsecret.html",
        "/private%2fsecret.html",
        "/private%5Csecret.html",
    ] {
        let r = raw(gw.port, "GET", target, &[]).await;
        assert!(r.status == 400 || r.status == 404, "{target}: {}", r.status);
        assert!(!r.text().contains("PRIVATE"), "{target}");
    }
    // Dot segments inside the root resolve there (as nginx).
    let r = raw(gw.port, "GET", "/sub/../style.css", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, CSS));
    let r = raw(gw.port, "GET", "/sub/%2e%2e/style.css", &[]).await;
    assert_eq!((r.status, r.text().as_str()), (200, CSS));

    // Symlinks: inside the root followed, out of it refused.
    assert_eq!(get(gw.port, "site", "/alias.txt").await.text(), TEXT);
    for path in [
        "/escape.txt",
        "/escape_dir/secret.txt",
        "/escape_dir/",
        "/assets/escape.txt",
    ] {
        let r = get(gw.port, "site", path).await;
        assert_eq!(r.status, 403, "{path}");
        assert!(!r.text().contains("SECRET"), "{path}");
    }
    assert!(
        gw.log().contains("resolves outside the root"),
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_files_stream_intact_without_being_held_in_memory() {
    let (site, _b, gw) = start().await;
    let r = get(gw.port, "site", "/big.bin").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(&*BIG.to_string()));
    assert!(
        r.body == site.big,
        "8 MiB body differs ({} bytes)",
        r.body.len()
    );

    // Keep-alive: the connection serves the next request after a streamed body.
    let mut c = H1Conn::connect(gw.port).await.unwrap();
    for _ in 0..2 {
        let r = c.get("site", "/big.bin").await;
        assert_eq!(r.body.len(), BIG);
    }

    // A client that reads nothing of a 64 MiB file: the gateway stays far below 64 MiB.
    let rss = || {
        let s = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
        let line = s
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .to_string();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let before = rss();
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stalled
        .write_all(b"GET /huge.bin HTTP/1.1\r\nHost: site\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = stalled.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 24 << 20,
        "gateway RSS grew by {grown} bytes for a stalled 64 MiB download"
    );
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_proxied_everything_else_static_and_logged() {
    let (_site, backend, gw) = start().await;
    let r = get(gw.port, "site", "/socket.io/?EIO=4&transport=polling").await;
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["backend"], "sio");
    assert_eq!(j["path"], "/socket.io/?EIO=4&transport=polling");
    // The WebSocket upgrade goes through too.
    let mut ws = ws_connect(gw.port, "site", "/socket.io/?EIO=4&transport=websocket").await;
    assert_eq!(ws_roundtrip(&mut ws, "ping").await, "ping");
    assert!(backend.ws_hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    drop(ws);
    // Everything else is files, never the backend.
    let hits = backend.app_hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get(gw.port, "site", "/").await.text(), INDEX);
    assert_eq!(get(gw.port, "site", "/socket.io.js").await.status, 404);
    assert_eq!(
        backend.app_hits.load(std::sync::atomic::Ordering::SeqCst),
        hits
    );

    // Access log and metrics see static responses like other local ones.
    assert!(
        eventually(Duration::from_secs(5), || async {
            let log = gw.log();
            log.lines().any(|l| {
                l.contains("\"GET / HTTP/1.1\" 200") && l.contains("route=routes[3] upstream=-")
            }) && log.lines().any(|l| {
                l.contains("\"GET /socket.io.js HTTP/1.1\" 404") && l.contains("route=routes[3]")
            })
        })
        .await,
        "{}",
        gw.log()
    );
    let m = get(gw.admin_port, "localhost", "/metrics").await.text();
    let count = |class: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("gateway_requests_total{")
                    && l.contains("route=\"routes[3]\"")
                    && l.contains(&format!("class=\"{class}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!((count("2xx"), count("4xx")), (Some(1), Some(1)), "{m}");
}

#[test]
fn config_errors_name_the_key() {
    let dir = unique_temp_dir("static-check");
    let file = dir.join("file.txt");
    std::fs::write(&file, "x").unwrap();
    std::fs::create_dir_all(dir.join("www")).unwrap();
    let f = file.display();
    let cases: Vec<(String, Vec<String>)> = vec![
        (
            "routes:\n  - { respond: {} }\n  - { static: { root: /nonexistent/www } }\n".into(),
            vec!["routes[1].static.root: /nonexistent/www: No such file or directory".into()],
        ),
        (
            format!("routes:\n  - {{ static: {{ root: \"{f}\" }} }}\n"),
            vec![format!("routes[0].static.root: not a directory: {f}")],
        ),
        (
            "upstreams: { a: { servers: [ { address: \"127.0.0.1:1\" } ] } }\nroutes:\n  - { upstream: a, static: { root: /tmp } }\n".into(),
            vec!["routes[0]: needs exactly one of upstream, respond, redirect, static".into()],
        ),
        (
            "routes:\n  - { static: { root: /tmp, index: [\"a/b\", \"..\"] } }\n".into(),
            vec![
                "routes[0].static.index[0]: \"a/b\" is not a file name".into(),
                "routes[0].static.index[1]: \"..\" is not a file name".into(),
            ],
        ),
        (
            "routes:\n  - { static: { root: /tmp, autoindex: true } }\n".into(),
            vec!["unknown field `autoindex`".into(), "routes[0].static".into()],
        ),
        (
            "routes:\n  - { static: { root: /tmp }, request_headers: { set: { X: y } } }\n".into(),
            vec!["routes[0].request_headers: only applies to routes with an upstream".into()],
        ),
        (
            "routes:\n  - { match: { path: /x }, static: { root: /tmp }, strip_prefix: true }\n".into(),
            vec!["routes[0].strip_prefix: needs match.path_prefix".into()],
        ),
    ];
    for (yaml, wants) in &cases {
        let (code, out) = check_config(yaml);
        assert_ne!(code, 0, "accepted:\n{yaml}");
        for w in wants {
            assert!(
                out.contains(w.as_str()),
                "for\n{yaml}\nexpected {w:?} in:\n{out}"
            );
        }
    }
    // A relative root is relative to the config file.
    let cfg = dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        "routes:\n  - { static: { root: www, max_age: 10m } }\n",
    )
    .unwrap();
    let (code, out) = check_config_file(&cfg);
    assert_eq!(code, 0, "{out}");
    std::fs::write(&cfg, "routes:\n  - { static: { root: nope } }\n").unwrap();
    let (code, out) = check_config_file(&cfg);
    assert_ne!(code, 0);
    let want = format!(
        "routes[0].static.root: {}: No such file",
        dir.join("nope").display()
    );
    assert!(out.contains(&want), "{want:?} in {out}");
    let _ = std::fs::remove_dir_all(&dir);
}
