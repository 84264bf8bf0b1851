//! The reference point for the benchmark: a bare Pingora round-robin proxy with no gateway
//! features (Pingora's own `load_balancer` example, without TLS), on the same Pingora build and
//! allocator.
//!
//! `cargo run --release --example bare_proxy -- --listen 127.0.0.1:8000 --upstream 127.0.0.1:9001 [--threads 1] [--work-stealing true|false]`
//!
//! `bench/run.sh` runs it beside the gateway, so that "what the gateway's features cost over
//! Pingora itself" is measured in the same run.

use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_load_balancing::{selection::RoundRobin, LoadBalancer};
use pingora_proxy::{ProxyHttp, Session};
use std::sync::Arc;

// The same allocator as the gateway binary, so that "gateway / bare" compares features only.
gateway::use_mimalloc!();

/// Round-robin over the upstreams, nothing else.
struct Lb(Arc<LoadBalancer<RoundRobin>>);

#[async_trait]
impl ProxyHttp for Lb {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        let upstream = self.0.select(b"", 256).expect("an upstream");
        Ok(Box::new(HttpPeer::new(upstream, false, String::new())))
    }
}

fn main() {
    let mut listen = "127.0.0.1:8000".to_string();
    let mut upstreams = Vec::new();
    let mut threads = 1usize;
    let mut work_stealing = true;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--listen" => listen = v,
            "--upstream" => upstreams.push(v),
            "--threads" => threads = v.parse().expect("--threads N"),
            "--work-stealing" => work_stealing = v.parse().expect("--work-stealing true|false"),
            _ => panic!("unknown argument {a}"),
        }
    }
    if upstreams.is_empty() {
        upstreams.push("127.0.0.1:9001".to_string());
    }
    let conf = ServerConf {
        threads,
        work_stealing,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let lb = LoadBalancer::try_from_iter(upstreams.iter().map(String::as_str))
        .expect("upstream addresses");
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Lb(Arc::new(lb)));
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
