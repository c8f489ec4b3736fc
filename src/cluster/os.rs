//! PostgreSQL binaries and the OS user the servers run as: finding the bindir, the unprivileged
//! account used when we are root, and creating root, dirs and files owned by it.

use std::ffi::CString;
use std::fs::{self, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tracing::info;

use super::error::{io_err, Result};
use super::{Cluster, ClusterError};

/// Finds the PostgreSQL bin directory: `pg_config --bindir`, then `initdb` on PATH, then the
/// highest `/usr/lib/postgresql/*/bin`.
pub fn find_pg_bindir() -> Result<PathBuf> {
    let usable = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").stderr(Stdio::null()).output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && usable(&dir) {
            return Ok(dir);
        }
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let initdb = dir.join("initdb");
        if !initdb.is_file() {
            continue;
        }
        // Resolve symlinks (/usr/local/bin/initdb -> .../15/bin/initdb) so sibling tools are found.
        if let Some(real) = fs::canonicalize(&initdb).ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
            if usable(&real) {
                return Ok(real);
            }
        }
        if usable(&dir) {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.split('.').map(|p| p.parse().ok()).collect::<Option<Vec<u32>>>()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, dir)| usable(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or_else(|| {
        ClusterError::NoBinaries("no initdb via `pg_config --bindir`, on PATH, or in /usr/lib/postgresql/*/bin".into())
    })
}

/// The unprivileged account the servers run as when we are root (PostgreSQL refuses root).
#[derive(Debug, Clone)]
pub(super) struct PgUser {
    pub(super) name: String,
    pub(super) uid: libc::uid_t,
    pub(super) gid: libc::gid_t,
}

fn lookup_user(name: &str) -> Option<PgUser> {
    let cname = CString::new(name).ok()?;
    // SAFETY: getpwnam_r writes only into the buffers we pass; zeroed passwd is a valid init.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    (rc == 0 && !result.is_null()).then(|| PgUser { name: name.into(), uid: pwd.pw_uid, gid: pwd.pw_gid })
}

pub(super) fn resolve_run_as() -> Result<Option<PgUser>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    if let Some(user) = lookup_user("postgres").or_else(|| lookup_user("pgcausal")) {
        return Ok(Some(user));
    }
    info!("creating system user pgcausal to run PostgreSQL (it refuses to run as root)");
    let out = Command::new("useradd")
        .args("--system --no-create-home --shell /usr/sbin/nologin pgcausal".split(' '))
        .output()
        .map_err(io_err("cannot run useradd"))?;
    // A parallel caller may have created it first, so look it up whatever useradd said.
    lookup_user("pgcausal").map(Some).ok_or_else(|| {
        ClusterError::Setup(format!("useradd pgcausal failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    })
}

fn traversable_by(meta: &fs::Metadata, user: &PgUser) -> bool {
    let mode = meta.mode();
    if meta.uid() == user.uid {
        mode & 0o100 != 0
    } else if meta.gid() == user.gid {
        mode & 0o010 != 0
    } else {
        mode & 0o001 != 0
    }
}

/// Creates the root, makes it traversable for the server user, and checks its ancestors are too.
pub(super) fn prepare_root(root: &Path, run_as: Option<&PgUser>) -> Result<PathBuf> {
    fs::create_dir_all(root).map_err(io_err(format!("cannot create {}", root.display())))?;
    let root = fs::canonicalize(root).map_err(io_err(format!("cannot resolve {}", root.display())))?;
    if let Some(user) = run_as {
        fs::set_permissions(&root, Permissions::from_mode(0o755)).map_err(io_err("cannot chmod root"))?;
        for dir in root.ancestors().skip(1) {
            let meta = fs::metadata(dir).map_err(io_err(format!("cannot stat {}", dir.display())))?;
            if !traversable_by(&meta, user) {
                return Err(ClusterError::Setup(format!(
                    "{} (mode {:o}) is not traversable by user {}; put the cluster root elsewhere or chmod o+x it",
                    dir.display(),
                    meta.mode() & 0o7777,
                    user.name
                )));
            }
        }
    }
    Ok(root)
}

impl Cluster {
    pub(super) fn make_node_dirs(&self, i: usize) -> Result<()> {
        for dir in [&self.nodes[i].dir, &self.nodes[i].data] {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(dir)
                .map_err(io_err(format!("cannot create {}", dir.display())))?;
            fs::set_permissions(dir, Permissions::from_mode(0o700)).map_err(io_err("chmod"))?;
            self.chown(dir)?;
        }
        Ok(())
    }

    pub(super) fn write_owned(&self, path: &Path, contents: &str, mode: u32) -> Result<()> {
        fs::write(path, contents).map_err(io_err(format!("cannot write {}", path.display())))?;
        fs::set_permissions(path, Permissions::from_mode(mode)).map_err(io_err("chmod"))?;
        self.chown(path)
    }

    pub(super) fn chown(&self, path: &Path) -> Result<()> {
        let Some(user) = &self.run_as else {
            return Ok(());
        };
        let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| ClusterError::Setup("NUL in path".into()))?;
        // SAFETY: cpath is a valid NUL-terminated path.
        if unsafe { libc::chown(cpath.as_ptr(), user.uid, user.gid) } != 0 {
            return Err(
                io_err(format!("cannot chown {} to {}", path.display(), user.name))(io::Error::last_os_error()),
            );
        }
        Ok(())
    }
}
