//! Command line: `gateway [-c FILE] [-t] [-u] [-d]`.

use crate::admin_client::AdminArgs;
use crate::upgrade::UpgradeArgs;
use std::path::PathBuf;
use std::time::Duration;

/// Default config path, relative to the working directory.
pub const DEFAULT_CONFIG: &str = "conf/gateway.yaml";

/// Parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cli {
    /// Config file.
    pub config: PathBuf,
    /// Only check the config and exit.
    pub test: bool,
    /// Take over the listening sockets of a running gateway (binary upgrade / reload).
    pub upgrade: bool,
    /// Run in the background.
    pub daemon: bool,
}

/// Usage text.
pub const USAGE: &str = "usage: gateway [-c FILE] [-t] [-u] [-d]
       gateway upgrade [-c FILE] [--bin NEW_BINARY] [--timeout 30s]
       gateway admin drain|undrain POOL ADDRESS [-c FILE]
  upgrade           zero-downtime binary upgrade / config reload of the running gateway:
                    checks FILE with the new binary, starts it with -u -d, hands the
                    listening sockets over (SIGQUIT to the old process), waits until it serves
  admin             drain (no new sessions; existing ones stay) or undrain a backend of the
                    running gateway through its admin listener (needs admin.token, or
                    GATEWAY_ADMIN_TOKEN)
  -c, --conf FILE   config file (default: conf/gateway.yaml)
  -t, --test        check the config (and every file it names) and exit: 0 if valid
  -u, --upgrade     take the listening sockets over from the running gateway (zero-downtime upgrade)
  -d, --daemon      run in the background
  -h, --help        this text
  -V, --version     print the version";

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run (or check) with these settings.
    Run(Cli),
    /// Print usage.
    Help,
    /// Print the version.
    Version,
    /// Upgrade the running gateway (`gateway upgrade ...`).
    Upgrade(UpgradeArgs),
    /// Drain or undrain a backend of the running gateway (`gateway admin ...`).
    Admin(AdminArgs),
}

/// Parses arguments (without the program name).
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Command, String> {
    let mut cli = Cli {
        config: PathBuf::from(DEFAULT_CONFIG),
        test: false,
        upgrade: false,
        daemon: false,
    };
    let args: Vec<String> = args.into_iter().collect();
    if args.first().map(String::as_str) == Some("upgrade") {
        return parse_upgrade(&args[1..]).map(Command::Upgrade);
    }
    if args.first().map(String::as_str) == Some("admin") {
        return parse_admin(&args[1..]).map(Command::Admin);
    }
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-c" | "--conf" => cli.config = it.next().ok_or("-c needs a file")?.into(),
            "-t" | "--test" => cli.test = true,
            "-u" | "--upgrade" => cli.upgrade = true,
            "-d" | "--daemon" => cli.daemon = true,
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            s if s.starts_with("--conf=") => cli.config = s["--conf=".len()..].into(),
            s if s.starts_with("-c") && s.len() > 2 => cli.config = s[2..].into(),
            s => return Err(format!("unknown argument \"{s}\"")),
        }
    }
    Ok(Command::Run(cli))
}

/// Parses `upgrade` arguments (after the word `upgrade`).
fn parse_upgrade(args: &[String]) -> Result<UpgradeArgs, String> {
    let mut a = UpgradeArgs {
        config: PathBuf::from(DEFAULT_CONFIG),
        bin: None,
        timeout: Duration::from_secs(30),
    };
    let mut it = args.iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "-c" | "--conf" => a.config = it.next().ok_or("-c needs a file")?.into(),
            "--bin" => a.bin = Some(it.next().ok_or("--bin needs a path")?.into()),
            "--timeout" => {
                a.timeout =
                    crate::config::parse_duration(it.next().ok_or("--timeout needs a duration")?)?
            }
            s => return Err(format!("unknown upgrade argument \"{s}\"")),
        }
    }
    Ok(a)
}

/// Parses `admin` arguments (after the word `admin`).
fn parse_admin(args: &[String]) -> Result<AdminArgs, String> {
    let mut words = Vec::new();
    let mut config = PathBuf::from(DEFAULT_CONFIG);
    let mut it = args.iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "-c" | "--conf" => config = it.next().ok_or("-c needs a file")?.into(),
            s => words.push(s.to_string()),
        }
    }
    match words.as_slice() {
        [action, pool, backend] if action == "drain" || action == "undrain" => Ok(AdminArgs {
            action: action.clone(),
            pool: pool.clone(),
            backend: backend.clone(),
            config,
        }),
        _ => Err("usage: gateway admin drain|undrain POOL ADDRESS [-c FILE]".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Command, String> {
        parse(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags() {
        let Command::Run(c) = p(&["-t", "-c", "x.yaml", "-u", "-d"]).unwrap() else {
            panic!()
        };
        assert_eq!(
            c,
            Cli {
                config: "x.yaml".into(),
                test: true,
                upgrade: true,
                daemon: true
            }
        );
        let Command::Run(c) = p(&[]).unwrap() else {
            panic!()
        };
        assert_eq!(c.config, PathBuf::from(DEFAULT_CONFIG));
        assert_eq!(p(&["--help"]).unwrap(), Command::Help);
        assert!(p(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(p(&["-c"]).is_err());
    }
}
