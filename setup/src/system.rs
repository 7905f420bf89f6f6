//! The side effects of setup commands, behind one trait: writing sysfs
//! attributes, loading modules, mounting, changing owners, looking users
//! up, waiting for the kernel. [`HostSystem`] does them for real; tests
//! use [`crate::fake::FakeSystem`], which records them and plays the
//! kernel's part on a fake tree (a fake tree cannot bind a device).

use std::io::{self, Write};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::user::{User, UserSpec};

/// The operations that change the host.
pub trait System {
    /// Writes `contents` to an existing sysfs/procfs attribute (never
    /// creates a file).
    fn write_attr(&mut self, path: &Path, contents: &str) -> io::Result<()>;

    /// Loads a kernel module; on failure, what modprobe said.
    fn modprobe(&mut self, module: &str) -> Result<(), String>;

    /// Creates `target` if needed and mounts hugetlbfs on it with page
    /// size `pagesize` (`2M`, `1G`).
    fn mount_hugetlbfs(&mut self, target: &Path, pagesize: &str) -> io::Result<()>;

    /// Changes the owner and group of `path`.
    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()>;

    /// Whether this process runs as root (effective uid 0).
    fn is_root(&self) -> bool;

    /// Looks a user up; `Ok(None)` when there is no such user.
    fn lookup_user(&self, spec: &UserSpec) -> Result<Option<User>, String>;

    /// Waits a little before looking at the kernel's state again (a
    /// driver probe or udev creating a node takes a moment).
    fn pause(&mut self);
}

/// The real host.
#[derive(Debug, Default)]
pub struct HostSystem;

/// How long [`HostSystem::pause`] waits; with [`crate::actions::POLLS`]
/// polls, the kernel gets about two seconds to bind a device.
const PAUSE: Duration = Duration::from_millis(20);

impl System for HostSystem {
    fn write_attr(&mut self, path: &Path, contents: &str) -> io::Result<()> {
        // One write call: sysfs attributes take the whole value at once.
        let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.write_all(contents.as_bytes())
    }

    fn modprobe(&mut self, module: &str) -> Result<(), String> {
        let output = Command::new("modprobe")
            .arg(module)
            .output()
            .map_err(|e| format!("could not run modprobe: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            Err(if stderr.is_empty() {
                format!("modprobe exited with {}", output.status)
            } else {
                stderr
            })
        }
    }

    fn mount_hugetlbfs(&mut self, target: &Path, pagesize: &str) -> io::Result<()> {
        std::fs::create_dir_all(target)?;
        nix::mount::mount(
            Some("nodev"),
            target,
            Some("hugetlbfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("pagesize={pagesize}").as_str()),
        )
        .map_err(io::Error::from)
    }

    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(io::Error::from)
    }

    fn is_root(&self) -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn lookup_user(&self, spec: &UserSpec) -> Result<Option<User>, String> {
        let found = match spec {
            UserSpec::Name(name) => nix::unistd::User::from_name(name),
            UserSpec::Uid(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(*uid)),
        }
        .map_err(|e| e.to_string())?;
        Ok(found.map(|user| User {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }))
    }

    fn pause(&mut self) {
        std::thread::sleep(PAUSE);
    }
}
