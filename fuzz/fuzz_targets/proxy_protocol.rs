//! The PROXY protocol header (`listeners[].proxy_protocol`): any bytes at the start of a
//! connection, and `encode` / `parse` round trips with addresses from the first 37 bytes.
#![no_main]

#[path = "../../tests/parsers/checks.rs"]
mod checks;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fn addr(data: &[u8], at: usize) -> SocketAddr {
    let b = |i: usize| *data.get(at + i).unwrap_or(&0);
    let ip = if b(0) & 1 == 1 {
        IpAddr::V6(Ipv6Addr::from(std::array::from_fn::<u8, 16, _>(|i| b(i + 1))))
    } else {
        IpAddr::V4(Ipv4Addr::new(b(1), b(2), b(3), b(4)))
    };
    SocketAddr::new(ip, u16::from_be_bytes([b(17), b(18)]))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::proxy_header_bytes(data);
    let v2 = data.get(36).is_some_and(|b| b & 1 == 1);
    let rest = data.get(37..).unwrap_or_default();
    checks::proxy_header_round_trip(v2, addr(data, 0), addr(data, 18), rest);
});
