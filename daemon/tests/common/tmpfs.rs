//! A small tmpfs mounted by a test, so that a file system can fill up on purpose: the mount
//! point is a temporary directory of its own, unmounted (and removed) on drop, also when the test
//! fails. Mounting needs root (or CAP_SYS_ADMIN); without it, [`Tmpfs::mount`] says why, and
//! the test reports itself skipped.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// The chunk [`Tmpfs::fill`] writes at a time.
const FILL_CHUNK_BYTES: usize = 64 * 1024;

/// A mounted tmpfs; unmounted on drop.
pub(crate) struct Tmpfs {
    // Declared first: unmounted before the mount point goes.
    mounted: bool,
    dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` on a new temporary directory. The error says why not
    /// (for a `SKIPPED:` line).
    pub(crate) fn mount(size_bytes: u64) -> Result<Self, String> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-tmpfs-")
            .tempdir()
            .map_err(|e| format!("cannot make a mount point: {e}"))?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_bytes},mode=0700"), "cairn-test-tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run `mount`: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "`mount -t tmpfs` failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Self { mounted: true, dir })
    }

    /// The mount point.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system with the file `name` until a write fails for want of space;
    /// returns the file's path. Panics on any other error.
    pub(crate) fn fill(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("the filler");
        let chunk = vec![0x5au8; FILL_CHUNK_BYTES];
        // Bounded by the file system's size; smaller writes take up the last partial chunk.
        let mut len = FILL_CHUNK_BYTES;
        loop {
            match file.write(&chunk[..len]) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                    if len == 1 {
                        break;
                    }
                    len /= 2;
                }
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        path
    }

    /// Fills the file system as [`Tmpfs::fill`] does, then gives `leave_bytes` back.
    pub(crate) fn fill_leaving(&self, name: &str, leave_bytes: u64) -> PathBuf {
        let path = self.fill(name);
        let file = std::fs::OpenOptions::new().write(true).open(&path).expect("the filler");
        let len = file.metadata().expect("the filler's size").len();
        file.set_len(len.saturating_sub(leave_bytes)).expect("shorten the filler");
        path
    }

    /// Bytes still free on the file system.
    pub(crate) fn free_bytes(&self) -> u64 {
        let output =
            Command::new("df").args(["--output=avail", "-B1"]).arg(self.dir.path()).output().expect("df");
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap_or_else(|| panic!("df said: {text}"))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let unmount = |lazy: bool| {
            let mut command = Command::new("umount");
            if lazy {
                command.arg("-l");
            }
            command.arg(self.dir.path()).status().is_ok_and(|s| s.success())
        };
        // A process still using it makes the plain unmount fail; the lazy one detaches it anyway.
        if !unmount(false) && !unmount(true) {
            eprintln!("cannot unmount the tmpfs at {}", self.dir.path().display());
        }
    }
}
