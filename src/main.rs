//! The `gateway` binary: the standard gateway with the built-in filters.

gateway::use_mimalloc!();

fn main() -> std::process::ExitCode {
    gateway::run_with(gateway::Registry::with_builtins())
}
