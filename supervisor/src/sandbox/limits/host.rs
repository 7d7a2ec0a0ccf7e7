//! What this host offers to enforce each limit with: a cgroup v2 controller, a cgroup v1
//! hierarchy, or nothing.
//!
//! A controller is bound to one hierarchy at a time. Pure v2 hosts (current distributions)
//! list it in the v2 root's `cgroup.controllers`; hybrid hosts mount it as a v1 hierarchy of
//! its own (`/sys/fs/cgroup/memory`, or shared, as in `/sys/fs/cgroup/cpu,cpuacct`) and leave
//! v2 without it. Both are read from `/proc/self/mountinfo` and the v2 root, never guessed
//! from well-known paths.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::sandbox::cgroup::unescape_mountinfo;

/// The cgroup controllers the limits use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Controller {
    Memory,
    Cpu,
    Pids,
}

impl Controller {
    pub const ALL: [Controller; 3] = [Controller::Memory, Controller::Cpu, Controller::Pids];

    /// The kernel's name of the controller.
    pub fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
        }
    }
}

/// How one limit is enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// The controller in the execution's cgroup v2 directory.
    V2,
    /// A cgroup of the execution's own in the v1 hierarchy mounted at `mount`.
    V1 { mount: PathBuf },
    /// `RLIMIT_NPROC` of the sandbox user only (processes, on hosts with no pids controller).
    Rlimit,
    /// Not enforced.
    None,
}

impl Mechanism {
    /// A short name for the summary: `cgroup v2`, `cgroup v1`, `RLIMIT_NPROC`, `none`.
    pub fn short_name(&self) -> &'static str {
        match self {
            Mechanism::V2 => "cgroup v2",
            Mechanism::V1 { .. } => "cgroup v1",
            Mechanism::Rlimit => "RLIMIT_NPROC",
            Mechanism::None => "none",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mechanism::V2 => f.write_str("the cgroup v2 controller"),
            Mechanism::V1 { mount } => write!(f, "the cgroup v1 hierarchy at {}", mount.display()),
            Mechanism::Rlimit => f.write_str("RLIMIT_NPROC of the sandbox user"),
            Mechanism::None => f.write_str("nothing"),
        }
    }
}

/// A cgroup v1 hierarchy: where it is mounted and the controllers bound to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Hierarchy {
    pub mount: PathBuf,
    pub controllers: Vec<String>,
}

/// The controllers of this host, as found when the execution starts.
#[derive(Debug, Clone, Default)]
pub struct HostCgroups {
    /// Controllers the cgroup v2 root offers (its `cgroup.controllers`).
    pub v2_controllers: Vec<String>,
    /// Every v1 hierarchy mounted whole (root `/`), first mount of each.
    pub v1: Vec<V1Hierarchy>,
}

impl HostCgroups {
    /// Reads mountinfo and the v2 root's `cgroup.controllers` (`cgroup2`: its mount point,
    /// opened with no link followed).
    pub fn detect(cgroup2: &Path) -> std::io::Result<HostCgroups> {
        use std::os::fd::AsFd as _;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let root = crate::sandbox::host_path::open_dir(cgroup2)?;
        let controllers = match super::files::read(root.as_fd(), "cgroup.controllers") {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => return Err(error),
        };
        Ok(HostCgroups::parse(&mountinfo, &controllers))
    }

    /// [`HostCgroups::detect`] from the text of mountinfo and of `cgroup.controllers`.
    pub fn parse(mountinfo: &str, v2_controllers: &str) -> HostCgroups {
        HostCgroups {
            v2_controllers: v2_controllers
                .split_ascii_whitespace()
                .map(str::to_owned)
                .collect(),
            v1: v1_hierarchies(mountinfo),
        }
    }

    /// How `controller` can be enforced here: v2 first (where a host has both kinds, the
    /// controller lives where it is bound), then v1.
    pub fn mechanism(&self, controller: Controller) -> Mechanism {
        if self.v2_controllers.iter().any(|c| c == controller.name()) {
            return Mechanism::V2;
        }
        match self.v1_hierarchy(controller) {
            Some(hierarchy) => Mechanism::V1 {
                mount: hierarchy.mount.clone(),
            },
            None if controller == Controller::Pids => Mechanism::Rlimit,
            None => Mechanism::None,
        }
    }

    /// The v1 hierarchy `controller` is bound to, if mounted.
    pub fn v1_hierarchy(&self, controller: Controller) -> Option<&V1Hierarchy> {
        self.v1
            .iter()
            .find(|h| h.controllers.iter().any(|c| c == controller.name()))
    }

    /// Mount points of the v1 hierarchies of the limits' controllers (each once): where
    /// execution cgroups of ours may be, for `gc`.
    pub fn v1_mounts(&self) -> Vec<PathBuf> {
        let mut mounts: Vec<PathBuf> = Vec::new();
        for controller in Controller::ALL {
            if let Some(hierarchy) = self.v1_hierarchy(controller) {
                if !mounts.contains(&hierarchy.mount) {
                    mounts.push(hierarchy.mount.clone());
                }
            }
        }
        mounts
    }
}

/// The v1 hierarchies of mountinfo: `cgroup` mounts of a hierarchy's root, with the
/// controllers from their super options (`rw,memory`, `rw,cpu,cpuacct`; `name=systemd` binds
/// none).
fn v1_hierarchies(mountinfo: &str) -> Vec<V1Hierarchy> {
    let mut found: Vec<V1Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        // `id parent major:minor root mount-point options [optional...] - fstype source super`
        let Some((mount, fs)) = line.split_once(" - ") else {
            continue;
        };
        let mut fs_fields = fs.split(' ');
        if fs_fields.next() != Some("cgroup") {
            continue;
        }
        let Some(options) = fs_fields.nth(1) else {
            continue;
        };
        let mut fields = mount.split(' ');
        let (Some(root), Some(point)) = (fields.nth(3), fields.next()) else {
            continue;
        };
        if root != "/" {
            continue;
        }
        let controllers: Vec<String> = options
            .split(',')
            .filter(|option| Controller::ALL.iter().any(|c| c.name() == *option))
            .map(str::to_owned)
            .collect();
        let taken = |name: &String| found.iter().any(|h| h.controllers.contains(name));
        if controllers.is_empty() || controllers.iter().any(taken) {
            continue;
        }
        found.push(V1Hierarchy {
            mount: PathBuf::from(unescape_mountinfo(point)),
            controllers,
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 20 0:32 /some/sub /mnt/memory-sub rw - cgroup cgroup rw,memory
51 20 0:32 / /mnt/memory-again rw - cgroup cgroup rw,memory";

    #[test]
    fn a_hybrid_host_enforces_through_its_v1_hierarchies() {
        let host = HostCgroups::parse(HYBRID, "");
        assert_eq!(
            host.mechanism(Controller::Memory),
            Mechanism::V1 {
                mount: "/sys/fs/cgroup/memory".into()
            }
        );
        assert_eq!(
            host.mechanism(Controller::Cpu),
            Mechanism::V1 {
                mount: "/sys/fs/cgroup/cpu".into()
            }
        );
        assert_eq!(
            host.v1_mounts(),
            [
                PathBuf::from("/sys/fs/cgroup/memory"),
                "/sys/fs/cgroup/cpu".into(),
                "/sys/fs/cgroup/pids".into()
            ]
        );
    }

    #[test]
    fn co_mounted_controllers_share_one_hierarchy() {
        let info = "\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 / /sys/fs/cgroup/pids\\040x rw - cgroup cgroup rw,pids";
        let host = HostCgroups::parse(info, "");
        assert_eq!(
            host.mechanism(Controller::Cpu),
            Mechanism::V1 {
                mount: "/sys/fs/cgroup/cpu,cpuacct".into()
            }
        );
        assert_eq!(
            host.mechanism(Controller::Pids),
            Mechanism::V1 {
                mount: "/sys/fs/cgroup/pids x".into()
            }
        );
        assert_eq!(host.mechanism(Controller::Memory), Mechanism::None);
    }

    #[test]
    fn a_pure_v2_host_enforces_through_its_controllers() {
        let info = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let host = HostCgroups::parse(info, "cpuset cpu io memory hugetlb pids rdma misc\n");
        for controller in Controller::ALL {
            assert_eq!(host.mechanism(controller), Mechanism::V2, "{controller:?}");
        }
        assert!(host.v1_mounts().is_empty());
    }

    #[test]
    fn without_any_controller_processes_fall_back_to_rlimit_nproc() {
        let host = HostCgroups::parse("29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw", "io");
        assert_eq!(host.mechanism(Controller::Memory), Mechanism::None);
        assert_eq!(host.mechanism(Controller::Cpu), Mechanism::None);
        assert_eq!(host.mechanism(Controller::Pids), Mechanism::Rlimit);
    }
}
