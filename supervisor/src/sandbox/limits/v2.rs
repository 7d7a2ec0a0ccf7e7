//! The limits on a cgroup v2 host: the `memory`, `cpu` and `pids` controllers of the
//! execution's own cgroup (`<mount>/tollgate/<execution id>`, see `cgroup`).
//!
//! A controller reaches a cgroup only when each ancestor enables it for its children in
//! `cgroup.subtree_control`: here the v2 root and `<mount>/tollgate`. Neither holds a process
//! (executions run in the leaves), so the kernel's "no internal processes" rule allows it.
//! The limits are written before the command starts; the counters are read once every
//! process is gone, before the directory is removed.

use std::io;
use std::os::fd::{AsFd as _, BorrowedFd};
use std::path::Path;

use nix::fcntl::OFlag;
use tollgate_policy::units::Cores;

use super::files;
use super::host::Controller;
use super::Usage;
use crate::sandbox::cgroup::PARENT_DIR;
use crate::sandbox::host_path;

/// The CFS period the CPU quota is given for: the kernel's default, 100 ms.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Enables `controllers` for the children of the v2 root mounted at `mount` and of its
/// `tollgate` directory, where they are not yet.
pub fn enable(mount: &Path, controllers: &[Controller]) -> io::Result<()> {
    if controllers.is_empty() {
        return Ok(());
    }
    let root = host_path::open_dir(mount)?;
    let parent = host_path::open_in(
        root.as_fd(),
        std::ffi::OsStr::new(PARENT_DIR),
        OFlag::O_PATH | OFlag::O_DIRECTORY,
        0,
    )?;
    // The common case, every run after the first: already enabled, nothing written.
    if missing(parent.as_fd(), controllers)?.is_empty() {
        return Ok(());
    }
    for dir in [root.as_fd(), parent.as_fd()] {
        let missing = missing(dir, controllers)?;
        if !missing.is_empty() {
            let change: Vec<String> = missing.iter().map(|c| format!("+{}", c.name())).collect();
            files::write(dir, "cgroup.subtree_control", &change.join(" "))?;
        }
    }
    Ok(())
}

/// The controllers of `wanted` that `dir` does not enable for its children.
fn missing(dir: BorrowedFd<'_>, wanted: &[Controller]) -> io::Result<Vec<Controller>> {
    let enabled = files::read(dir, "cgroup.subtree_control")?;
    Ok(wanted
        .iter()
        .copied()
        .filter(|c| !enabled.split_ascii_whitespace().any(|e| e == c.name()))
        .collect())
}

/// `memory.max`, and no swap (`memory.swap.max`, absent where swap is not accounted).
pub fn set_memory(dir: BorrowedFd<'_>, bytes: u64) -> io::Result<()> {
    files::write(dir, "memory.max", &bytes.to_string())?;
    match files::write(dir, "memory.swap.max", "0") {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `cpu.max`: the quota of `cores` per [`CPU_PERIOD_US`].
pub fn set_cpu(dir: BorrowedFd<'_>, cores: Cores) -> io::Result<()> {
    let quota = cores.quota_us(CPU_PERIOD_US);
    files::write(dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))
}

/// `pids.max`: tasks (processes and threads) at once.
pub fn set_pids(dir: BorrowedFd<'_>, tasks: u64) -> io::Result<()> {
    files::write(dir, "pids.max", &tasks.to_string())
}

/// CPU time of every process the cgroup held, user and system: `cpu.stat`, which every v2
/// cgroup has, with or without the cpu controller.
pub fn cpu_time_ms(dir: BorrowedFd<'_>) -> Option<u64> {
    files::read_keyed(dir, "cpu.stat", "usage_usec").map(|usec| usec / 1000)
}

/// What the controllers of `controllers` counted in the execution's cgroup.
pub fn read_usage(dir: BorrowedFd<'_>, controllers: &[Controller], usage: &mut Usage) {
    for controller in controllers {
        match controller {
            Controller::Memory => {
                usage.oom_kills = files::read_keyed(dir, "memory.events", "oom_kill").unwrap_or(0);
                // memory.peak: Linux 5.19 and newer.
                usage.memory_peak_bytes = files::read_number(dir, "memory.peak");
            }
            Controller::Cpu => {
                usage.cpu_throttled_periods = files::read_keyed(dir, "cpu.stat", "nr_throttled");
            }
            Controller::Pids => usage.tasks_peak = files::read_number(dir, "pids.peak"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    /// A temporary directory standing for a cgroup2 mount, with `tollgate/<id>` in it and the
    /// interface files the kernel would show (created empty, as writes land in them).
    struct FakeCgroup2 {
        mount: PathBuf,
    }

    impl FakeCgroup2 {
        fn new(tag: &str) -> FakeCgroup2 {
            let mount = std::env::temp_dir().join(format!(
                "tollgate-v2-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&mount);
            fs::create_dir_all(mount.join("tollgate/exec")).unwrap();
            for file in ["cgroup.subtree_control", "tollgate/cgroup.subtree_control"] {
                fs::write(mount.join(file), "").unwrap();
            }
            for file in ["memory.max", "memory.swap.max", "cpu.max", "pids.max"] {
                fs::write(mount.join("tollgate/exec").join(file), "").unwrap();
            }
            FakeCgroup2 { mount }
        }

        fn exec(&self) -> std::os::fd::OwnedFd {
            host_path::open_dir(&self.mount.join("tollgate/exec")).unwrap()
        }

        fn text(&self, file: &str) -> String {
            fs::read_to_string(self.mount.join(file)).unwrap()
        }
    }

    impl Drop for FakeCgroup2 {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.mount);
        }
    }

    #[test]
    fn controllers_are_enabled_on_the_root_and_the_tollgate_parent() {
        let fake = FakeCgroup2::new("enable");
        fs::write(fake.mount.join("cgroup.subtree_control"), "cpu io\n").unwrap();
        enable(&fake.mount, &Controller::ALL).unwrap();
        // The root already had cpu: only the others are asked for.
        assert_eq!(fake.text("cgroup.subtree_control"), "+memory +pids");
        assert_eq!(
            fake.text("tollgate/cgroup.subtree_control"),
            "+memory +cpu +pids"
        );
        // Once the parent enables them, nothing more is written.
        fs::write(fake.mount.join("cgroup.subtree_control"), "untouched").unwrap();
        fs::write(
            fake.mount.join("tollgate/cgroup.subtree_control"),
            "cpu memory pids\n",
        )
        .unwrap();
        enable(&fake.mount, &Controller::ALL).unwrap();
        assert_eq!(fake.text("cgroup.subtree_control"), "untouched");
    }

    #[test]
    fn the_limits_are_written_to_the_execution_cgroup() {
        let fake = FakeCgroup2::new("write");
        let dir = fake.exec();
        set_memory(dir.as_fd(), 256 << 20).unwrap();
        set_cpu(dir.as_fd(), Cores::parse("1.5").unwrap()).unwrap();
        set_pids(dir.as_fd(), 64).unwrap();
        assert_eq!(fake.text("tollgate/exec/memory.max"), "268435456");
        assert_eq!(fake.text("tollgate/exec/memory.swap.max"), "0");
        assert_eq!(fake.text("tollgate/exec/cpu.max"), "150000 100000");
        assert_eq!(fake.text("tollgate/exec/pids.max"), "64");
        // Without swap accounting there is no memory.swap.max: nothing to turn off.
        fs::remove_file(fake.mount.join("tollgate/exec/memory.swap.max")).unwrap();
        set_memory(dir.as_fd(), 1 << 30).unwrap();
        assert_eq!(fake.text("tollgate/exec/memory.max"), "1073741824");
        // A controller that is not there is an error, not a silent no-op.
        fs::remove_file(fake.mount.join("tollgate/exec/pids.max")).unwrap();
        assert!(set_pids(dir.as_fd(), 64).is_err());
    }

    #[test]
    fn a_link_planted_for_an_interface_file_is_not_followed() {
        let fake = FakeCgroup2::new("link");
        let target = fake.mount.join("elsewhere");
        fs::write(&target, "").unwrap();
        fs::remove_file(fake.mount.join("tollgate/exec/memory.max")).unwrap();
        std::os::unix::fs::symlink(&target, fake.mount.join("tollgate/exec/memory.max")).unwrap();
        let error = set_memory(fake.exec().as_fd(), 1 << 20).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ELOOP));
        assert_eq!(fs::read_to_string(&target).unwrap(), "");
    }

    #[test]
    fn the_counters_are_read_from_the_execution_cgroup() {
        let fake = FakeCgroup2::new("read");
        let exec = fake.mount.join("tollgate/exec");
        fs::write(
            exec.join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        fs::write(exec.join("memory.peak"), "67108864\n").unwrap();
        fs::write(
            exec.join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 50\n\
             nr_throttled 25\nthrottled_usec 1000\n",
        )
        .unwrap();
        fs::write(exec.join("pids.peak"), "17\n").unwrap();
        let dir = fake.exec();
        let mut usage = Usage::default();
        read_usage(dir.as_fd(), &Controller::ALL, &mut usage);
        assert_eq!(cpu_time_ms(dir.as_fd()), Some(2500));
        assert_eq!(
            usage,
            Usage {
                oom_kills: 1,
                memory_peak_bytes: Some(64 << 20),
                cpu_time_ms: None,
                cpu_throttled_periods: Some(25),
                tasks_peak: Some(17),
            }
        );
        // A kernel without memory.peak or pids.peak: unknown, not zero.
        fs::remove_file(exec.join("memory.peak")).unwrap();
        fs::remove_file(exec.join("pids.peak")).unwrap();
        let mut usage = Usage::default();
        read_usage(dir.as_fd(), &Controller::ALL, &mut usage);
        assert_eq!((usage.memory_peak_bytes, usage.tasks_peak), (None, None));
    }
}
