//! Processes the bench starts: the unprivileged account PgBouncer and Pgpool-II run as, files
//! they own, free ports, and `Service`, a started server that is stopped (by PID, with any
//! children it forked) when dropped.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The account third-party servers run as (PgBouncer refuses root; Pgpool-II should not be root).
#[derive(Clone, Copy, Debug)]
pub struct RunAs {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

impl RunAs {
    /// `postgres` (or the `pgcausal` user the cluster harness creates) when we are root, else none.
    pub fn detect() -> Option<RunAs> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        ["postgres", "pgcausal"].iter().find_map(|name| {
            let cname = CString::new(*name).ok()?;
            // SAFETY: getpwnam returns a pointer into static storage or null; copied at once.
            let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
            (!pw.is_null()).then(|| unsafe { RunAs { uid: (*pw).pw_uid, gid: (*pw).pw_gid } })
        })
    }

    pub fn apply(run_as: Option<RunAs>, cmd: &mut Command) {
        if let Some(r) = run_as {
            cmd.uid(r.uid).gid(r.gid);
        }
    }
}

/// Gives `path` to the run-as account (no-op when not root).
pub fn chown(run_as: Option<RunAs>, path: &Path) {
    let Some(r) = run_as else { return };
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::chown(c.as_ptr(), r.uid, r.gid) };
    assert_eq!(rc, 0, "chown {}: {}", path.display(), std::io::Error::last_os_error());
}

/// Writes a file (mode 0600) owned by the run-as account.
pub fn write_owned(run_as: Option<RunAs>, path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    chown(run_as, path);
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Raises the soft open-file limit to the hard one (children inherit it): 1000 idle clients
/// need more than the usual 1024 descriptors in the bench and in the proxies.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on our own process.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// A server process this bench started. Dropping it stops it and every process it forked.
pub struct Service {
    pub name: String,
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
    /// Signal for a clean, fast shutdown (flushes callgrind output, closes pgpool's children).
    stop_signal: libc::c_int,
}

impl Service {
    /// Spawns `cmd` with stdout+stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, port: u16, log: PathBuf, stop_signal: libc::c_int) -> Service {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        cmd.stdin(Stdio::null()).stdout(file.try_clone().unwrap()).stderr(file);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Service { name: name.to_string(), port, log, child: Some(child), stop_signal }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The last `n` lines of the service's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stops the process: its stop signal, up to `grace`, then SIGKILL; children it forked and
    /// left behind are killed by PID too. Idempotent.
    pub fn stop_within(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else { return };
        let pid = child.id() as libc::pid_t;
        let descendants = descendants(pid);
        // SAFETY: pid is our own unreaped child.
        unsafe { libc::kill(pid, self.stop_signal) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = child.try_wait() {
            eprintln!("compare: {} (pid {pid}) ignored signal {}; killing", self.name, self.stop_signal);
            let _ = child.kill();
        }
        let _ = child.wait();
        // Children (pgpool's per-client processes) normally exit with their parent; give them a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left: Vec<(libc::pid_t, u64)> = descendants;
        while Instant::now() < deadline {
            left.retain(|&(p, start)| start_time(p) == Some(start));
            if left.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for (p, _) in left {
            eprintln!("compare: killing leftover child {p} of {}", self.name);
            // SAFETY: same PID and start time as a process our child forked.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop_within(Duration::from_secs(30));
    }
}

/// (pid, start time) of every live process descended from `root`.
fn descendants(root: libc::pid_t) -> Vec<(libc::pid_t, u64)> {
    let mut table: Vec<(libc::pid_t, libc::pid_t, u64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<libc::pid_t>() else { continue };
        if let Some((ppid, start)) = stat(pid) {
            table.push((pid, ppid, start));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid, start) in &table {
            if ppid == parent {
                out.push((pid, start));
                frontier.push(pid);
            }
        }
    }
    out
}

/// (ppid, starttime) from /proc/PID/stat.
fn stat(pid: libc::pid_t) -> Option<(libc::pid_t, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // After "comm)": state(0) ppid(1) ... starttime is field 22 of the full line = index 19 here.
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn start_time(pid: libc::pid_t) -> Option<u64> {
    stat(pid).map(|(_, s)| s)
}

/// VmRSS and VmHWM of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}
