//! The gateway binary runs on mimalloc with the defaults of `src/alloc.rs`, set by option
//! name: mimalloc prints its options at start when `MIMALLOC_VERBOSE=1`.

use std::process::Command;

/// Options as mimalloc itself reports them for `gateway -t`, with `env` added.
fn options(env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["-t", "-c", "conf/gateway.yaml"])
        .env("MIMALLOC_VERBOSE", "1")
        .envs(env.iter().copied())
        .output()
        .expect("run gateway -t");
    assert!(out.status.success(), "gateway -t failed: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn mimalloc_gives_memory_back_by_default() {
    let opts = options(&[]);
    assert!(
        opts.contains("mimalloc: process init"),
        "not on mimalloc:\n{opts}"
    );
    // The indices in src/alloc.rs name these two options; a mimalloc that moved them fails here.
    assert!(opts.contains("option 'arena_eager_commit': 0"), "{opts}");
    assert!(opts.contains("option 'purge_delay': 100"), "{opts}");
}

#[test]
fn mimalloc_environment_still_overrides() {
    let opts = options(&[
        ("MIMALLOC_PURGE_DELAY", "7"),
        ("MIMALLOC_ARENA_EAGER_COMMIT", "1"),
    ]);
    assert!(opts.contains("option 'purge_delay': 7"), "{opts}");
    assert!(opts.contains("option 'arena_eager_commit': 1"), "{opts}");
}
