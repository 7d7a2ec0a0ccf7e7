//! Reading and writing cgroup interface files (`memory.max`, `cpu.stat`, ...) inside a cgroup
//! directory held open, following no link (see `host_path`), and parsing their two formats.

use std::ffi::OsStr;
use std::io::{self, Read as _, Write as _};
use std::os::fd::BorrowedFd;

use nix::fcntl::OFlag;

use crate::sandbox::host_path;

/// Writes `value` to the interface file `name` of the cgroup directory `dir`, in one
/// `write(2)`: the kernel parses each write as a whole.
pub fn write(dir: BorrowedFd<'_>, name: &str, value: &str) -> io::Result<()> {
    let fd = host_path::open_in(dir, OsStr::new(name), OFlag::O_WRONLY, 0)?;
    let written = std::fs::File::from(fd).write(value.as_bytes())?;
    if written == value.len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short write to {name}"),
        ))
    }
}

/// Reads the interface file `name` of the cgroup directory `dir`.
pub fn read(dir: BorrowedFd<'_>, name: &str) -> io::Result<String> {
    let fd = host_path::open_in(dir, OsStr::new(name), OFlag::O_RDONLY, 0)?;
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text)?;
    Ok(text)
}

/// Reads a file holding one number (`memory.peak`, `pids.peak`); `None` when the kernel has
/// no such file or it says something else.
pub fn read_number(dir: BorrowedFd<'_>, name: &str) -> Option<u64> {
    read(dir, name).ok()?.trim().parse().ok()
}

/// Reads the value of `key` in a flat-keyed file (`key value` lines: `cpu.stat`,
/// `memory.events`, `memory.oom_control`).
pub fn read_keyed(dir: BorrowedFd<'_>, name: &str, key: &str) -> Option<u64> {
    keyed(&read(dir, name).ok()?, key)
}

/// The value of `key` in the text of a flat-keyed file.
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.trim().split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_files_are_read_by_key() {
        let oom_control = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed(oom_control, "oom_kill"), Some(3));
        assert_eq!(keyed(oom_control, "oom"), None);
        let cpu_stat = "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_throttled 7\n";
        assert_eq!(keyed(cpu_stat, "usage_usec"), Some(1500));
        assert_eq!(keyed(cpu_stat, "nr_throttled"), Some(7));
        assert_eq!(keyed("broken\nkey x\n", "key"), None);
    }
}
