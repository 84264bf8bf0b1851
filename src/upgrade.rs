//! `gateway upgrade`: zero-downtime binary upgrade and config reload. Checks the new config
//! with the new binary (`-t`), starts the new process with `-u -d`, waits until it is waiting
//! for the listening sockets, sends SIGQUIT to the old process (which hands its sockets over,
//! keeps serving in-flight work for the grace period, then exits), and waits until the new
//! process serves. A failure before the hand-over leaves the old process untouched.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// How long Pingora's old process still accepts after sending its sockets (its CLOSE_TIMEOUT),
/// plus a margin.
const PINGORA_CLOSE_TIMEOUT_MS: u64 = 5_500;

/// Settings of one upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeArgs {
    /// Config for the new process.
    pub config: PathBuf,
    /// Binary of the new process (default: this executable).
    pub bin: Option<PathBuf>,
    /// How long to wait for each step.
    pub timeout: Duration,
}

/// Why an upgrade did not happen (or did not complete).
#[derive(Debug)]
pub enum UpgradeError {
    /// The new config or binary failed `-t`; nothing was changed.
    Check(String),
    /// No running gateway was found; nothing was changed.
    NoOldProcess(String),
    /// The new process did not start; the old one keeps serving.
    NewFailed(String),
    /// The hand-over started but the new process did not report ready.
    NotReady(String),
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            UpgradeError::Check(s) => write!(
                f,
                "new configuration rejected, old process left running:\n{s}"
            ),
            UpgradeError::NoOldProcess(s) => write!(f, "no running gateway to upgrade: {s}"),
            UpgradeError::NewFailed(s) => write!(
                f,
                "new process failed to start, old process left running: {s}"
            ),
            UpgradeError::NotReady(s) => {
                write!(f, "hand-over started but the new process is not ready: {s}")
            }
        }
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn read_pid(path: &str) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// The pid that answers the admin `/status`, if any.
fn admin_pid(addr: std::net::SocketAddr) -> Option<i32> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let i = body.find("\"pid\":")? + 6;
    body[i..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// What the hand-over needs from the new config: the pid file, the socket the listeners are
/// handed over on, and the admin listener (to see the new process serve).
struct HandOver {
    pid_file: String,
    upgrade_sock: String,
    admin: Option<std::net::SocketAddr>,
}

impl HandOver {
    /// Reads them from the config file alone (no runtime compiled: no filters, DNS or
    /// certificates), after the new binary's `-t` accepted it.
    fn read(path: &Path) -> Result<HandOver, UpgradeError> {
        let cfg = crate::Config::load(path).map_err(|e| UpgradeError::Check(e.to_string()))?;
        let mut issues = crate::config::Issues::default();
        let (server, _) = crate::config::server_conf(&cfg.server, &mut issues);
        if let Some(e) = issues.errors.first() {
            return Err(UpgradeError::Check(e.to_string()));
        }
        let admin = if cfg.admin.enabled {
            let a = cfg.admin.address.parse().map_err(|_| {
                UpgradeError::Check(format!(
                    "admin.address: invalid socket address \"{}\"",
                    cfg.admin.address
                ))
            })?;
            Some(a)
        } else {
            None
        };
        Ok(HandOver {
            pid_file: server.pid_file,
            upgrade_sock: server.upgrade_sock,
            admin,
        })
    }
}

/// Runs an upgrade; returns the new process id.
pub fn upgrade(args: &UpgradeArgs) -> Result<i32, UpgradeError> {
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .map_err(|e| UpgradeError::Check(format!("cannot find this executable: {e}")))?,
    };
    let cfg = args.config.to_string_lossy().into_owned();
    let check = Command::new(&bin)
        .args(["-t", "-c", &cfg])
        .output()
        .map_err(|e| UpgradeError::Check(format!("cannot run {}: {e}", bin.display())))?;
    if !check.status.success() {
        return Err(UpgradeError::Check(format!(
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        )));
    }
    // The new binary has checked the whole config (its own filters included); only the three
    // paths the hand-over needs are read here, without compiling the runtime.
    let conf = HandOver::read(&args.config)?;
    let old = read_pid(&conf.pid_file)
        .filter(|&p| alive(p))
        .ok_or_else(|| UpgradeError::NoOldProcess(format!("no live pid in {}", conf.pid_file)))?;

    // The new process daemonises (its launcher exits 0 after the fork); the daemon writes the
    // pid file, then binds upgrade_sock and waits there for the sockets.
    let sock = Path::new(&conf.upgrade_sock);
    let _ = std::fs::remove_file(sock);
    let restore = |why: String| {
        // The daemon moved our pid file aside: put the old process back on record.
        let _ = std::fs::write(&conf.pid_file, format!("{old}\n"));
        UpgradeError::NewFailed(why)
    };
    let mut launcher = Command::new(&bin)
        .args(["-u", "-d", "-c", &cfg])
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| UpgradeError::NewFailed(format!("cannot run {}: {e}", bin.display())))?;
    let mut status = None;
    wait_until(args.timeout, || {
        status = launcher.try_wait().ok().flatten();
        status.is_some()
    });
    match status {
        Some(st) if st.success() => {}
        Some(st) => return Err(restore(format!("it exited with {st}"))),
        None => {
            let _ = launcher.kill();
            return Err(restore(format!(
                "it did not start within {:?}",
                args.timeout
            )));
        }
    }
    let mut new = None;
    let waiting = wait_until(args.timeout, || {
        new = read_pid(&conf.pid_file).filter(|&p| p != old && alive(p));
        new.is_some() && sock.exists()
    });
    let Some(new) = new.filter(|_| waiting) else {
        return Err(restore(format!(
            "it is not waiting for the sockets on {}",
            sock.display()
        )));
    };
    // Hand over: the old process sends its listening sockets, keeps serving in-flight work.
    // SAFETY: plain kill(2) on a pid we read and checked.
    if unsafe { libc::kill(old, libc::SIGQUIT) } != 0 {
        // SAFETY: as above, on the daemon we just started.
        unsafe { libc::kill(new, libc::SIGKILL) };
        return Err(restore(format!(
            "cannot signal old process {old}: {}",
            std::io::Error::last_os_error()
        )));
    }
    let handed_over = Instant::now();
    if !wait_until(args.timeout, || !sock.exists() || !alive(new)) || !alive(new) {
        return Err(UpgradeError::NotReady(format!(
            "process {new} did not take the sockets over"
        )));
    }
    // Serving: the admin listener starts after the proxy, which starts after the health checks.
    if let Some(admin) = conf.admin {
        if !wait_until(args.timeout, || admin_pid(admin) == Some(new)) {
            return Err(UpgradeError::NotReady(format!(
                "process {new} does not answer on the admin listener {admin}"
            )));
        }
    }
    // Pingora's old process keeps accepting on the shared sockets for a fixed 5 s after the
    // hand-over; return once only the new process (and its config) takes new connections.
    let close_window = Duration::from_millis(PINGORA_CLOSE_TIMEOUT_MS);
    std::thread::sleep(close_window.saturating_sub(handed_over.elapsed()));
    Ok(new)
}

/// Runs `gateway upgrade ...` and reports on stderr.
pub fn run(args: &UpgradeArgs) -> ExitCode {
    match upgrade(args) {
        Ok(pid) => {
            println!("gateway: upgraded, now serving as pid {pid}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway upgrade: {e}");
            ExitCode::from(1)
        }
    }
}

/// Writes the pid file of a foreground process (Pingora writes it only when daemonised).
pub fn write_pid_file(pid_file: &str) {
    if let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
        log::warn!("cannot write pid file {pid_file}: {e}");
    }
}
