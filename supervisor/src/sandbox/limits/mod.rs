//! Memory, CPU and process limits of one execution, enforced by its cgroups.
//!
//! Executions of many teams share a worker: without a bound, one of them takes the host's
//! memory, its CPUs or its pid space from all the others. Each limit is enforced by the
//! execution's cgroup, with what the host offers ([`host`]): the cgroup v2 controller in the
//! execution's own v2 directory on pure v2 hosts ([`v2`]), or, on hybrid hosts whose v2 tree
//! has no controllers, a cgroup of the execution's own in the controller's v1 hierarchy, which
//! the child joins before it drops privileges ([`v1`], [`ChildLimits`]). Processes are also
//! bounded by `RLIMIT_NPROC` of the sandbox user (`spawn`), the last resort where there is no
//! pids controller. A limit that nothing on the host can enforce stops the run unless the
//! operator allows it (`--allow-unenforced-limits`).
//!
//! The limits come from the policy (`limits.memory`, `limits.cpu`, `limits.processes`); the
//! flags of `tollgate run` may only lower them ([`ResourceLimits::lowered_by`]). When the
//! execution ends, its cgroups say what it used ([`Usage`]), for the summary and for the
//! message when the memory limit killed the command.

pub mod host;

mod files;
pub mod v1;
pub mod v2;

use std::io;
use std::os::fd::{AsFd as _, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tollgate_policy::units::{ByteSize, Cores};

use super::cgroup::ExecutionCgroup;
use host::{Controller, HostCgroups, Mechanism};

/// The most cgroup v1 hierarchies an execution joins (memory, cpu, pids).
pub const MAX_V1_HIERARCHIES: usize = 3;

/// What the child does for the limits between clone and exec, as root: join the execution's
/// cgroup v1 directories (on hybrid hosts), by writing `0` (itself) to their `cgroup.procs`,
/// opened by the supervisor before the clone. System calls only.
#[derive(Debug, Default)]
pub struct ChildLimits {
    pub v1_procs: [Option<RawFd>; MAX_V1_HIERARCHIES],
}

impl ChildLimits {
    pub fn join(&self) -> io::Result<()> {
        for fd in self.v1_procs.iter().flatten() {
            // SAFETY: writes a static buffer to a descriptor the supervisor keeps open.
            if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// Why the limits could not be put in place or taken down.
#[derive(Debug, thiserror::Error)]
pub enum LimitsError {
    #[error(
        "{limit} cannot be enforced on this host: it has no cgroup {controller} controller \
         (neither in cgroup v2 nor as a mounted v1 hierarchy); enable or mount it, or pass \
         --allow-unenforced-limits to run without this limit; {}",
        super::DOCTOR
    )]
    Unenforceable {
        limit: String,
        controller: &'static str,
    },
    #[error(
        "cannot {action} {path}: {source}; tollgate must run as root on a writable cgroup \
         hierarchy; {}",
        super::DOCTOR
    )]
    Cgroup {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "cgroup {path} already exists: another execution uses this id; generate a fresh one \
         (sandbox::cgroup::new_execution_id)"
    )]
    Exists { path: PathBuf },
    #[error(
        "processes in cgroup {path} did not exit within {waited:?} of SIGKILL (stuck in the \
         kernel?); `tollgate gc` removes the cgroup once they are gone"
    )]
    NotEmpty { path: PathBuf, waited: Duration },
}

/// The limits of one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Bytes of memory: anonymous, memfd, tmpfs pages and the page cache it causes.
    pub memory: u64,
    /// CPU time in cores; `None`: unlimited.
    pub cpu: Option<Cores>,
    /// Tasks (processes and threads) at once.
    pub processes: u64,
}

/// What the flags of `tollgate run` ask for; each may only lower the policy's limit.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitFlags {
    /// `--memory SIZE`.
    pub memory: Option<u64>,
    /// `--cpus N`.
    pub cpus: Option<Cores>,
    /// `--max-processes N`.
    pub max_processes: Option<u64>,
    /// `--allow-unenforced-limits`: run even where a limit cannot be enforced.
    pub allow_unenforced: bool,
}

impl ResourceLimits {
    /// The limits of a policy's `limits` section; without a policy, that section's defaults.
    pub fn of_policy(limits: Option<&tollgate_policy::model::Limits>) -> ResourceLimits {
        match limits {
            Some(limits) => ResourceLimits {
                memory: limits.memory,
                cpu: limits.cpu,
                processes: limits.processes,
            },
            None => {
                let defaults = tollgate_policy::schema::LimitsSection::default();
                ResourceLimits {
                    memory: defaults.memory.0,
                    cpu: None,
                    processes: defaults.processes,
                }
            }
        }
    }

    /// These limits lowered by the flags of one run. A flag above the policy's limit is
    /// refused: the team's policy is what the operator agreed to, and a command line cannot
    /// widen it.
    pub fn lowered_by(self, flags: &LimitFlags) -> Result<ResourceLimits, String> {
        let refuse = |flag: &str, asked: String, key: &str, allowed: String| {
            format!(
                "{flag} {asked} is more than the policy allows (limits.{key}: {allowed}): the \
                 flag can only lower a limit; raise limits.{key} in the team's policy instead"
            )
        };
        let mut lowered = self;
        if let Some(memory) = flags.memory {
            if memory > self.memory {
                return Err(refuse(
                    "--memory",
                    ByteSize(memory).to_string(),
                    "memory",
                    ByteSize(self.memory).to_string(),
                ));
            }
            lowered.memory = memory;
        }
        if let Some(cpus) = flags.cpus {
            if let Some(allowed) = self.cpu.filter(|allowed| cpus > *allowed) {
                return Err(refuse(
                    "--cpus",
                    cpus.to_string(),
                    "cpu",
                    allowed.to_string(),
                ));
            }
            lowered.cpu = Some(cpus);
        }
        if let Some(processes) = flags.max_processes {
            if processes > self.processes {
                return Err(refuse(
                    "--max-processes",
                    processes.to_string(),
                    "processes",
                    self.processes.to_string(),
                ));
            }
            lowered.processes = processes;
        }
        Ok(lowered)
    }

    /// `limits.memory 1GiB`, as messages name it.
    pub fn memory_description(&self) -> String {
        format!("limits.memory {}", ByteSize(self.memory))
    }
}

/// How each limit of an execution is enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforcement {
    pub memory: Mechanism,
    /// `None`: no CPU limit was asked for.
    pub cpu: Option<Mechanism>,
    pub processes: Mechanism,
}

impl Enforcement {
    /// What `host` can enforce `limits` with.
    pub fn plan(host: &HostCgroups, limits: &ResourceLimits) -> Enforcement {
        Enforcement {
            memory: host.mechanism(Controller::Memory),
            cpu: limits.cpu.map(|_| host.mechanism(Controller::Cpu)),
            processes: host.mechanism(Controller::Pids),
        }
    }

    /// `(controller, mechanism)` of each limit asked for.
    fn each(&self) -> impl Iterator<Item = (Controller, &Mechanism)> {
        [
            Some((Controller::Memory, &self.memory)),
            self.cpu.as_ref().map(|m| (Controller::Cpu, m)),
            Some((Controller::Pids, &self.processes)),
        ]
        .into_iter()
        .flatten()
    }
}

/// What an execution used, read from its cgroups once every process is gone. `None`: this
/// host's kernel does not count it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Usage {
    /// Processes the kernel's OOM killer killed at the memory limit.
    pub oom_kills: u64,
    pub memory_peak_bytes: Option<u64>,
    /// User and system time of every process.
    pub cpu_time_ms: Option<u64>,
    /// Scheduling periods in which the CPU limit stopped the execution.
    pub cpu_throttled_periods: Option<u64>,
    pub tasks_peak: Option<u64>,
}

/// The limits of an execution and what enforced them, for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct LimitsReport {
    pub memory_bytes: u64,
    /// Cores, as written in the policy (`"1.5"`); `null`: unlimited.
    pub cpu: Option<String>,
    pub processes: u64,
    pub enforced_by: EnforcedBy,
}

/// `cgroup v2`, `cgroup v1`, `RLIMIT_NPROC` or `none`, per limit.
#[derive(Debug, Clone, Serialize)]
pub struct EnforcedBy {
    pub memory: &'static str,
    pub cpu: Option<&'static str>,
    pub processes: &'static str,
}

/// The limits of one execution, in place in its cgroups. Dropping it removes its v1
/// cgroups; [`ExecutionLimits::remove`] does the same and reports failures.
#[derive(Debug)]
pub struct ExecutionLimits {
    limits: ResourceLimits,
    enforcement: Enforcement,
    /// Controllers of the execution's v2 cgroup that carry a limit.
    v2: Vec<Controller>,
    v1: Vec<v1::V1Cgroup>,
}

impl ExecutionLimits {
    /// Puts `limits` in place for the execution whose v2 cgroup is `cgroup` (just created,
    /// empty): written into it, or into v1 cgroups of the execution created here.
    pub fn apply(
        cgroup: &ExecutionCgroup,
        execution: &str,
        limits: ResourceLimits,
        allow_unenforced: bool,
    ) -> Result<ExecutionLimits, LimitsError> {
        let host = HostCgroups::detect(cgroup.mount()).map_err(|source| LimitsError::Cgroup {
            action: "read the controllers of",
            path: cgroup.mount().to_path_buf(),
            source,
        })?;
        let enforcement = Enforcement::plan(&host, &limits);
        let mut v2_controllers = Vec::new();
        let mut v1_groups: Vec<(PathBuf, Vec<Controller>)> = Vec::new();
        for (controller, mechanism) in enforcement.each() {
            match mechanism {
                Mechanism::V2 => v2_controllers.push(controller),
                Mechanism::V1 { mount } => match v1_groups.iter_mut().find(|(m, _)| m == mount) {
                    Some((_, controllers)) => controllers.push(controller),
                    None => v1_groups.push((mount.clone(), vec![controller])),
                },
                // RLIMIT_NPROC is always set (see `spawn`).
                Mechanism::Rlimit => {}
                Mechanism::None => {
                    let error = LimitsError::Unenforceable {
                        limit: describe(controller, &limits),
                        controller: controller.name(),
                    };
                    if !allow_unenforced {
                        return Err(error);
                    }
                    eprintln!(
                        "tollgate: warning: {} is not enforced: this host has no cgroup {} \
                         controller (--allow-unenforced-limits)",
                        describe(controller, &limits),
                        controller.name()
                    );
                }
            }
        }
        let mut applied = ExecutionLimits {
            limits,
            enforcement,
            v2: Vec::new(),
            v1: Vec::new(),
        };
        if !v2_controllers.is_empty() {
            v2::enable(cgroup.mount(), &v2_controllers).map_err(|source| LimitsError::Cgroup {
                action: "enable the limits' controllers in",
                path: cgroup.mount().join(super::cgroup::PARENT_DIR),
                source,
            })?;
            let dir = cgroup.as_fd();
            for controller in &v2_controllers {
                let written = match controller {
                    Controller::Memory => v2::set_memory(dir, limits.memory),
                    Controller::Cpu => limits.cpu.map_or(Ok(()), |cores| v2::set_cpu(dir, cores)),
                    Controller::Pids => v2::set_pids(dir, limits.processes),
                };
                written.map_err(|source| LimitsError::Cgroup {
                    action: "write the limits of",
                    path: cgroup.path().to_path_buf(),
                    source,
                })?;
            }
            applied.v2 = v2_controllers;
        }
        for (mount, controllers) in v1_groups {
            let cgroup = v1::V1Cgroup::create(&mount, execution, controllers)?;
            for controller in cgroup.controllers() {
                match controller {
                    Controller::Memory => cgroup.set_memory(limits.memory)?,
                    Controller::Cpu => {
                        if let Some(cores) = limits.cpu {
                            cgroup.set_cpu(cores)?;
                        }
                    }
                    Controller::Pids => cgroup.set_pids(limits.processes)?,
                }
            }
            applied.v1.push(cgroup);
        }
        Ok(applied)
    }

    pub fn limits(&self) -> &ResourceLimits {
        &self.limits
    }

    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    /// What the child needs to join the execution's v1 cgroups.
    pub fn child(&self) -> ChildLimits {
        let mut child = ChildLimits::default();
        for (slot, cgroup) in child.v1_procs.iter_mut().zip(&self.v1) {
            *slot = Some(cgroup.procs_fd());
        }
        child
    }

    /// What the execution used; read once every process of it is gone (its counters are
    /// final then), before the cgroups are removed.
    pub fn usage(&self, cgroup: &ExecutionCgroup) -> Usage {
        let mut usage = Usage::default();
        v2::read_usage(cgroup.as_fd(), &self.v2, &mut usage);
        for v1 in &self.v1 {
            v1.read_usage(&mut usage);
        }
        usage.cpu_time_ms = v2::cpu_time_ms(cgroup.as_fd());
        usage
    }

    pub fn report(&self) -> LimitsReport {
        LimitsReport {
            memory_bytes: self.limits.memory,
            cpu: self.limits.cpu.map(|cores| cores.to_string()),
            processes: self.limits.processes,
            enforced_by: EnforcedBy {
                memory: self.enforcement.memory.short_name(),
                cpu: self.enforcement.cpu.as_ref().map(Mechanism::short_name),
                processes: self.enforcement.processes.short_name(),
            },
        }
    }

    /// Removes the execution's v1 cgroups (the v2 one is the caller's), every one even when
    /// an earlier one fails; reports the first failure.
    pub fn remove(self) -> Result<(), LimitsError> {
        let mut first_error = None;
        for cgroup in self.v1 {
            if let Err(error) = cgroup.remove() {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// For `tollgate doctor`: what enforces each limit on this host, checked by putting the
/// default limits (and a CPU limit, where the host can enforce one) on a scratch execution
/// cgroup. Fails only when the memory limit, which every run has, cannot be enforced.
pub fn check_host() -> Result<String, String> {
    let id = super::cgroup::new_execution_id().map_err(|e| e.to_string())?;
    let scratch = ExecutionCgroup::create(&id).map_err(|e| e.to_string())?;
    let host = HostCgroups::detect(scratch.mount())
        .map_err(|e| format!("cannot read the cgroup controllers of this host: {e}"))?;
    let mut limits = ResourceLimits::of_policy(None);
    let cpu = host.mechanism(Controller::Cpu);
    if cpu != Mechanism::None {
        limits.cpu = Cores::from_millicores(1000);
    }
    let applied = ExecutionLimits::apply(&scratch, &id, limits, false);
    let outcome = match applied {
        Ok(applied) => {
            let enforcement = applied.enforcement().clone();
            applied
                .remove()
                .map_err(|e| e.to_string())
                .map(|()| enforcement)
        }
        Err(error) => Err(error.to_string()),
    };
    scratch.kill_and_remove().map_err(|e| e.to_string())?;
    let enforcement = outcome?;
    let cpu = match enforcement.cpu {
        Some(mechanism) => mechanism.to_string(),
        None => "nothing (a policy with limits.cpu fails here without                  --allow-unenforced-limits)"
            .to_owned(),
    };
    let processes = match enforcement.processes {
        Mechanism::Rlimit => Mechanism::Rlimit.to_string(),
        mechanism => format!("{mechanism}, and RLIMIT_NPROC of the sandbox user"),
    };
    Ok(format!(
        "memory: {}; cpu: {cpu}; processes: {processes}",
        enforcement.memory
    ))
}

/// `limits.memory (1GiB)`, `limits.cpu (0.5 cores)`, `limits.processes (1024)`.
fn describe(controller: Controller, limits: &ResourceLimits) -> String {
    match controller {
        Controller::Memory => format!("limits.memory ({})", ByteSize(limits.memory)),
        Controller::Cpu => format!(
            "limits.cpu ({} cores)",
            limits.cpu.map(|c| c.to_string()).unwrap_or_default()
        ),
        Controller::Pids => format!("limits.processes ({})", limits.processes),
    }
}

/// What to tell the caller when the memory limit killed a process: the command itself
/// (it died of SIGKILL: exit status 137), or another process of the execution.
pub fn oom_message(
    usage: &Usage,
    limits: &ResourceLimits,
    killed_by: Option<i32>,
) -> Option<String> {
    if usage.oom_kills == 0 {
        return None;
    }
    let limit = limits.memory_description();
    Some(if killed_by == Some(libc::SIGKILL) {
        format!("the command ran out of memory ({limit})")
    } else {
        format!("a process of the command ran out of memory and was killed ({limit})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(memory: u64, cpu: Option<&str>, processes: u64) -> ResourceLimits {
        ResourceLimits {
            memory,
            cpu: cpu.map(|c| Cores::parse(c).unwrap()),
            processes,
        }
    }

    #[test]
    fn without_a_policy_the_defaults_apply() {
        assert_eq!(ResourceLimits::of_policy(None), limits(1 << 30, None, 1024));
    }

    #[test]
    fn flags_lower_the_policy_limits() {
        let policy = limits(1 << 30, Some("2"), 1024);
        let flags = LimitFlags {
            memory: Some(256 << 20),
            cpus: Some(Cores::parse("0.5").unwrap()),
            max_processes: Some(16),
            allow_unenforced: false,
        };
        assert_eq!(
            policy.lowered_by(&flags),
            Ok(limits(256 << 20, Some("0.5"), 16))
        );
        assert_eq!(policy.lowered_by(&LimitFlags::default()), Ok(policy));
        // Any CPU limit is lower than none.
        let unlimited = limits(1 << 30, None, 1024);
        let cpus = LimitFlags {
            cpus: Some(Cores::parse("8").unwrap()),
            ..LimitFlags::default()
        };
        assert_eq!(
            unlimited.lowered_by(&cpus),
            Ok(limits(1 << 30, Some("8"), 1024))
        );
    }

    #[test]
    fn flags_that_raise_a_limit_are_refused() {
        let policy = limits(512 << 20, Some("1"), 64);
        let memory = LimitFlags {
            memory: Some(1 << 30),
            ..LimitFlags::default()
        };
        let error = policy.lowered_by(&memory).unwrap_err();
        assert!(
            error.starts_with(
                "--memory 1GiB is more than the policy allows (limits.memory: 512MiB)"
            ),
            "{error}"
        );
        let cpus = LimitFlags {
            cpus: Some(Cores::parse("1.5").unwrap()),
            ..LimitFlags::default()
        };
        assert!(policy
            .lowered_by(&cpus)
            .unwrap_err()
            .contains("limits.cpu: 1)"));
        let processes = LimitFlags {
            max_processes: Some(65),
            ..LimitFlags::default()
        };
        assert!(policy
            .lowered_by(&processes)
            .unwrap_err()
            .contains("--max-processes 65 is more than the policy allows (limits.processes: 64)"));
    }

    #[test]
    fn an_oom_kill_is_reported_for_the_command_or_another_process() {
        let limits = limits(1 << 30, None, 1024);
        let mut usage = Usage::default();
        assert_eq!(oom_message(&usage, &limits, Some(libc::SIGKILL)), None);
        usage.oom_kills = 1;
        assert_eq!(
            oom_message(&usage, &limits, Some(libc::SIGKILL)).as_deref(),
            Some("the command ran out of memory (limits.memory 1GiB)")
        );
        assert!(oom_message(&usage, &limits, None)
            .unwrap()
            .starts_with("a process of the command ran out of memory"));
    }

    #[test]
    fn the_plan_follows_what_the_host_offers() {
        let hybrid = HostCgroups::parse(
            "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
             39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids",
            "",
        );
        let plan = Enforcement::plan(&hybrid, &limits(1 << 30, Some("1"), 8));
        assert_eq!(
            plan.memory,
            Mechanism::V1 {
                mount: "/sys/fs/cgroup/memory".into()
            }
        );
        assert_eq!(plan.cpu, Some(Mechanism::None));
        let plan = Enforcement::plan(&hybrid, &limits(1 << 30, None, 8));
        assert_eq!(plan.cpu, None);
        assert_eq!(plan.each().count(), 2);
    }
}
