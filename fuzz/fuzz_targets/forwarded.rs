//! `X-Forwarded-For` and `Forwarded`: addresses from the first 40 bytes, header lines from
//! the rest. An untrusted peer is always the client; a trusted proxy's chain is never fooled
//! by what the client wrote before it; `client_ip` never makes an address up.
#![no_main]

#[path = "../../tests/parsers/checks.rs"]
mod checks;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

fn bytes<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    std::array::from_fn(|i| *data.get(at + i).unwrap_or(&0))
}

fn untrusted(data: &[u8], at: usize) -> IpAddr {
    let ip = if data.get(at).is_some_and(|b| b & 1 == 1) {
        IpAddr::V6(Ipv6Addr::from(bytes::<16>(data, at + 1)))
    } else {
        IpAddr::V4(Ipv4Addr::from(bytes::<4>(data, at + 1)))
    };
    let f = checks::policy(false, gateway::config::XffMode::Append);
    if f.is_trusted(ip) {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7))
    } else {
        ip
    }
}

fn trusted(data: &[u8], at: usize) -> IpAddr {
    let [a, b, c] = bytes::<3>(data, at);
    match a % 3 {
        0 => IpAddr::V4(Ipv4Addr::new(10, a, b, c)),
        1 => IpAddr::V4(Ipv4Addr::new(192, 168, b, c)),
        _ => IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0,
            0,
            0,
            0,
            0,
            u16::from(b),
            u16::from(c),
        )),
    }
}

const NAMES: &[&str] = &[
    "X-Forwarded-For",
    "Forwarded",
    "X-Real-IP",
    "X_Real_IP",
    "True-Client-IP",
    "CF-Connecting-IP",
    "X_Forwarded_For",
    "X-Forwarded-Host",
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let lines: Vec<Vec<u8>> = data
        .get(40..)
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .take(8)
        .map(<[u8]>::to_vec)
        .collect();
    let headers: Vec<(&str, Vec<u8>)> = lines
        .iter()
        .map(|l| {
            (
                NAMES[usize::from(*l.first().unwrap_or(&0)) % NAMES.len()],
                l.clone(),
            )
        })
        .collect();
    let flags = *data.first().unwrap_or(&0);
    checks::untrusted_peer(untrusted(data, 1), &headers, flags & 1 == 1);
    let hops: Vec<IpAddr> = (0..usize::from(flags >> 1 & 3))
        .map(|i| trusted(data, 20 + 3 * i))
        .collect();
    checks::trusted_chain(
        untrusted(data, 1),
        &hops,
        trusted(data, 30),
        &lines,
        flags & 8 == 8,
    );
    let (xff, fwd) = lines.split_at(lines.len() / 2);
    checks::any_forwarded_lines(trusted(data, 33), xff, fwd);
});
