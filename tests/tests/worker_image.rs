//! The node service's image end to end, run the way the DaemonSet runs it: built from
//! Debian packages by `images/worker/build.sh` (cached in the local podman store), started
//! with podman as a privileged container (runc: crun refuses this host's hybrid cgroups)
//! with the host's cgroup hierarchy, bpffs, PID namespace and uid lease directory, its
//! socket's directory bind-mounted from the host. `doctor` passes inside; an unprivileged
//! user of the HOST launches through the socket and gets the command's output and exit
//! status; the ConfigMap and Secret layouts Kubernetes makes are read (a request through
//! the proxy gets the Secret's token injected, and a ConfigMap edit swapped in as the
//! kubelet swaps it is in force for the next execution); the host's `gc` and the
//! container's leave each other's executions alone; and the image holds every path the
//! DaemonSet names.
//!
//! Skipped, with the reason printed, only when podman cannot run at all.

use std::{
    fs,
    os::unix::{
        fs::{DirBuilderExt as _, PermissionsExt as _},
        net::UnixStream,
    },
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use tollgate_tests::{
    images::{self, kubernetes_object, podman},
    leaks::SuiteLock,
    sandbox::{assert_execution_gone, output, read_json_lines, Running, HANG_LIMIT},
    serve::{TestGroup, TestUser},
    tollgate, tollgate_path,
    upstream::{UpstreamHost, HTTP_PORT},
    Scratch,
};

/// How long the service may take to listen (doctor's checks, the eBPF programs, gc run
/// first): a guard against a hang.
const START_LIMIT: Duration = Duration::from_secs(120);

/// How long the service may take to put a changed team policy in force (it rescans every
/// second by default): a guard against a hang.
const RELOAD_LIMIT: Duration = Duration::from_secs(30);

/// The team every container here serves; its policy has no network (loopback only).
const TEAM: &str = "data-eng";
const OFFLINE_POLICY: &str = "version: 1\nteam: data-eng\n";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The image, or `None` (and why, printed) when podman cannot run here.
fn image() -> Option<String> {
    if let Err(why) = images::podman_usable() {
        eprintln!("skipping: podman cannot run containers here: {why}");
        return None;
    }
    Some(images::worker_image())
}

/// What `podman run` is given: the DaemonSet's settings (privileged, host PID namespace,
/// the host's /sys/fs/cgroup, /sys/fs/bpf and /run/tollgate-users) and this machine's
/// necessities (runc; no CAP_SYS_RESOURCE, so limits podman need not raise).
fn daemonset_options() -> Vec<String> {
    // As tollgate makes it when it is missing: root's alone.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create("/run/tollgate-users")
        .expect("create /run/tollgate-users");
    [
        "--runtime=runc",
        "--privileged",
        "--pid=host",
        "--network=none",
        "--ulimit=nofile=1024:4096",
        "--ulimit=nproc=1024:4096",
        "--volume=/sys/fs/cgroup:/sys/fs/cgroup",
        "--volume=/sys/fs/bpf:/sys/fs/bpf",
        "--volume=/run/tollgate-users:/run/tollgate-users",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// A container of the image, removed (stopped first, with SIGTERM) on drop.
struct Container {
    name: String,
}

impl Container {
    fn name() -> String {
        format!(
            "tollgate-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// `podman run --detach OPTIONS IMAGE ARGS`.
    fn start(image: &str, options: &[String], args: &[&str]) -> Container {
        let name = Container::name();
        let mut command = vec![
            "run".to_owned(),
            "--detach".into(),
            format!("--name={name}"),
        ];
        command.extend(options.iter().cloned());
        command.push(image.to_owned());
        command.extend(args.iter().map(|arg| arg.to_string()));
        let argv: Vec<&str> = command.iter().map(String::as_str).collect();
        let started = podman(&argv);
        assert!(
            started.status.success(),
            "podman {argv:?}: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        Container { name }
    }

    fn running(&self) -> bool {
        let state = podman(&["inspect", "--format", "{{.State.Running}}", &self.name]);
        String::from_utf8_lossy(&state.stdout).trim() == "true"
    }

    fn logs(&self) -> String {
        let logs = podman(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&logs.stdout),
            String::from_utf8_lossy(&logs.stderr)
        )
    }

    /// Waits until `socket` accepts a connection; panics with the container's log if the
    /// container stops first or [`START_LIMIT`] passes.
    fn wait_for_socket(&self, socket: &Path) {
        let deadline = Instant::now() + START_LIMIT;
        while UnixStream::connect(socket).is_err() {
            assert!(
                self.running(),
                "the service's container stopped before listening:\n{}",
                self.logs()
            );
            assert!(
                Instant::now() < deadline,
                "the service did not listen on {} within {START_LIMIT:?}:\n{}",
                socket.display(),
                self.logs()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the service with SIGTERM (as a rolling update does) and waits for it to exit.
    fn stop(&self) {
        let stopped = podman(&["stop", "--time=30", &self.name]);
        assert!(
            stopped.status.success(),
            "podman stop: {}",
            String::from_utf8_lossy(&stopped.stderr)
        );
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["stop", "--time=10", &self.name]);
        let _ = podman(&["rm", "--force", &self.name]);
    }
}

/// A node service in a container, with its host-side directories: the socket's
/// (`/run/tollgate`), the launch audit's (`/var/log/tollgate`), its node.yaml.
struct Service {
    container: Container,
    socket: PathBuf,
    launches: PathBuf,
    /// The host side of `/etc/tollgate/teams`.
    teams: PathBuf,
    _scratch: Scratch,
}

/// How the team directory and the secrets reach the container.
enum Layout {
    /// A plain directory with `<team>.yaml` ([`OFFLINE_POLICY`]) in it.
    Plain,
    /// As the kubelet writes a ConfigMap volume (`..<timestamp>/<team>.yaml`, a `..data`
    /// link to it, `<team>.yaml` links through `..data`), with this policy, and mounts a
    /// Secret's key with `subPath` (one root file of mode 0400, holding [`SECRET`], bound at
    /// `/etc/tollgate/secrets/<team>/api-token`).
    Kubernetes(String),
}

/// Writes a version of the team ConfigMap's volume as the kubelet does (its atomic
/// writer): the files in a new `..<timestamp>` directory, a `..data_tmp` link to it renamed
/// over `..data` (the one atomic step), the previous version removed.
fn configmap_update(volume: &Path, version: &str, policy: &str) {
    let dir = volume.join(version);
    fs::create_dir(&dir).expect("mkdir the ConfigMap's version");
    fs::write(dir.join(format!("{TEAM}.yaml")), policy).expect("write a team");
    let previous = fs::read_link(volume.join("..data")).ok();
    std::os::unix::fs::symlink(version, volume.join("..data_tmp")).expect("..data_tmp");
    fs::rename(volume.join("..data_tmp"), volume.join("..data")).expect("swap ..data");
    if let Some(previous) = previous {
        fs::remove_dir_all(volume.join(previous)).expect("remove the previous version");
    }
}

/// The team's secret, as its Secret holds it.
const SECRET: &str = "a-token-of-data-eng";

/// A policy that lets the team reach `up` with its `api-token` secret as a bearer token.
fn credential_policy(up: &UpstreamHost) -> String {
    format!(
        "version: 1
team: {TEAM}
network:
  hosts:
    up.test: {addr}
  allow:
    - host: up.test
      ports: [{HTTP_PORT}]
      schemes: [http]
      allowed_ips: [{subnet}]
auth_providers:
  - name: Example API
    type: bearer
    secret: {{file: api-token}}
    scope: [http://up.test:{HTTP_PORT}]
credentials:
  - {{pattern: 'http://up.test:{HTTP_PORT}', provider: Example API}}
",
        addr = up.addr,
        subnet = up.subnet(),
    )
}

impl Service {
    /// Starts `tollgate serve` in a container of `image` with `options`, letting `caller`
    /// (through `group`, the socket's) launch for [`TEAM`].
    fn start(
        image: &str,
        options: Vec<String>,
        group: &TestGroup,
        caller: &TestUser,
        layout: Layout,
    ) -> Service {
        let scratch = Scratch::new("worker-image");
        let run = scratch.dir.join("run");
        let logs = scratch.dir.join("logs");
        let teams = scratch.dir.join("teams");
        for dir in [&run, &logs, &teams] {
            fs::create_dir_all(dir).expect("create a service directory");
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let node_yaml = scratch.dir.join("node.yaml");
        fs::write(
            &node_yaml,
            format!(
                "version: 1\n\
                 socket: {{path: /run/tollgate/tollgate.sock, group: {gid}, mode: \"0660\"}}\n\
                 audit: /var/log/tollgate/launches.jsonl\n\
                 shutdown_grace: 10s\n\
                 callers:\n  - uid: {uid}\n    teams: [{TEAM}]\n",
                gid = group.gid,
                uid = caller.uid,
            ),
        )
        .expect("write node.yaml");
        fs::set_permissions(&node_yaml, fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut options = options;
        options.extend([
            format!(
                "--volume={}:/etc/tollgate/node.yaml:ro",
                node_yaml.display()
            ),
            format!("--volume={}:/run/tollgate", run.display()),
            format!("--volume={}:/var/log/tollgate", logs.display()),
            format!("--volume={}:/etc/tollgate/teams:ro", teams.display()),
        ]);
        match layout {
            Layout::Plain => {
                fs::write(teams.join(format!("{TEAM}.yaml")), OFFLINE_POLICY)
                    .expect("write a team");
            }
            Layout::Kubernetes(policy) => {
                configmap_update(&teams, "..2026_01_01_00_00_00.000000001", &policy);
                std::os::unix::fs::symlink(
                    format!("..data/{TEAM}.yaml"),
                    teams.join(format!("{TEAM}.yaml")),
                )
                .expect("link the team's key");
                let secret = scratch.dir.join("api-token");
                fs::write(&secret, SECRET).expect("write the secret");
                fs::set_permissions(&secret, fs::Permissions::from_mode(0o400)).expect("chmod");
                options.push(format!(
                    "--volume={}:/etc/tollgate/secrets/{TEAM}/api-token:ro",
                    secret.display()
                ));
            }
        }
        let container = Container::start(
            image,
            &options,
            &["serve", "--config", "/etc/tollgate/node.yaml"],
        );
        let socket = run.join("tollgate.sock");
        container.wait_for_socket(&socket);
        Service {
            container,
            socket,
            launches: logs.join("launches.jsonl"),
            teams,
            _scratch: scratch,
        }
    }

    /// `tollgate run --connect SOCKET --team TEAM -- CMD`, as `user`, from the host.
    fn launch(&self, user: &TestUser, team: &str, cmd: &[&str]) -> Command {
        let mut command = user.command(tollgate_path());
        command
            .arg("run")
            .arg("--connect")
            .arg(&self.socket)
            .args(["--team", team, "--"])
            .args(cmd);
        command
    }

    /// The execution ids of the service's `launch` records.
    fn executions(&self) -> Vec<String> {
        let mut ids: Vec<String> = read_json_lines(&self.launches)
            .iter()
            .filter_map(|record| record["execution"].as_str().map(str::to_owned))
            .collect();
        ids.dedup();
        ids
    }
}

#[test]
fn doctor_passes_in_the_container() {
    let Some(image) = image() else { return };
    let _suite = SuiteLock::shared();
    let mut args = vec!["run".to_owned(), "--rm".into()];
    args.extend(daemonset_options());
    args.extend([image, "doctor".into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let doctor = output(Command::new("podman").args(&argv), None, HANG_LIMIT);
    assert_eq!(
        doctor.code(),
        0,
        "tollgate doctor in the container:\n{}",
        doctor.describe()
    );
    assert!(
        doctor
            .stdout
            .contains("tollgate can build every wall on this host")
            && !doctor.stdout.contains("FAIL"),
        "{}",
        doctor.stdout
    );
}

#[test]
fn an_unprivileged_host_user_launches_through_the_containers_socket() {
    let Some(image) = image() else { return };
    let _suite = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let service = Service::start(&image, daemonset_options(), &group, &user, Layout::Plain);

    // The command runs on the image's root (its /etc/tollgate-image, which the host lacks),
    // its output is the caller's, its status the caller's.
    let ran = output(
        &mut service.launch(
            &user,
            TEAM,
            &[
                "/bin/sh",
                "-c",
                "grep '^suite' /etc/tollgate-image; echo \"uid $(id -u)\"; exit 7",
            ],
        ),
        None,
        HANG_LIMIT,
    );
    assert_eq!(ran.code(), 7, "{}", ran.describe());
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"suite bookworm"), "{}", ran.describe());
    let uid: u32 = lines[1]
        .strip_prefix("uid ")
        .expect("a uid line")
        .parse()
        .expect("a uid");
    assert!(
        uid != 0 && uid != user.uid,
        "the command ran as uid {uid}, not a leased one"
    );

    // A team the caller may not use: one line, 125.
    let refused = output(
        &mut service.launch(&user, "other-team", &["/bin/true"]),
        None,
        HANG_LIMIT,
    );
    assert_eq!(refused.code(), 125, "{}", refused.describe());
    assert!(
        refused.stderr.starts_with("tollgate: "),
        "{}",
        refused.describe()
    );

    service.container.stop();
    let executions = service.executions();
    assert!(!executions.is_empty(), "the service audited no launch");
    for id in executions {
        assert_execution_gone(&id);
    }
}

/// Kubernetes' own file layouts: the team policy through the ConfigMap volume's links, the
/// team's secret as one file bound by `subPath`; a request from the sandbox reaches the
/// test upstream through the proxy with that secret injected. The container shares the
/// host's network namespace here (the DaemonSet's pod has a network of its own) only so
/// that the proxy can dial the upstream's veth.
#[test]
fn the_configmap_and_secret_layouts_of_kubernetes_are_read() {
    let Some(image) = image() else { return };
    let _suite = SuiteLock::shared();
    let up = UpstreamHost::start();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);
    let options = daemonset_options()
        .into_iter()
        .map(|option| match option.as_str() {
            "--network=none" => "--network=host".to_owned(),
            _ => option,
        })
        .collect();
    let service = Service::start(
        &image,
        options,
        &group,
        &user,
        Layout::Kubernetes(credential_policy(&up)),
    );
    // Prints the status the proxy or the upstream answered.
    let request = format!(
        "import urllib.request, urllib.error\n\
         try:\n    print(urllib.request.urlopen('http://up.test:{HTTP_PORT}/from-the-image').status)\n\
         except urllib.error.HTTPError as e:\n    print(e.code)"
    );
    let status = || {
        let ran = output(
            &mut service.launch(&user, TEAM, &["/usr/bin/python3", "-c", &request]),
            None,
            HANG_LIMIT,
        );
        assert_eq!(ran.code(), 0, "{}", ran.describe());
        ran.stdout
    };
    assert_eq!(status(), "200\n");
    let seen = up.requests_to("/from-the-image");
    assert_eq!(seen.len(), 1, "{seen:?}");
    let authorization: Vec<&str> = seen[0]["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|header| header[0] == "authorization")
        .filter_map(|header| header[1].as_str())
        .collect();
    assert_eq!(authorization, [format!("Bearer {SECRET}").as_str()]);

    // An edit of the ConfigMap, swapped in as the kubelet does: the next executions get the
    // new policy (no network for the team: the proxy refuses), with no restart.
    configmap_update(
        &service.teams,
        "..2026_01_01_00_01_00.000000002",
        &format!("version: 1\nteam: {TEAM}\nnetwork:\n  allow: []\n"),
    );
    let deadline = Instant::now() + RELOAD_LIMIT;
    loop {
        let reached = up.requests_to("/from-the-image").len();
        let answered = status();
        if answered == "403\n" {
            let now = up.requests_to("/from-the-image").len();
            assert_eq!(now, reached, "the refused request reached the upstream");
            break;
        }
        assert_eq!(answered, "200\n");
        assert!(
            Instant::now() < deadline,
            "the ConfigMap's new version was not in force within {RELOAD_LIMIT:?}:\n{}",
            service.container.logs()
        );
    }
}

/// Executions are named after their supervisor's pid, and every tollgate reaps the
/// cgroups of supervisors it cannot find alive: the host's `gc` (which every local `tollgate
/// run` also does first) must leave the container's executions alone, and the container's
/// service (which collects at start) the host's. With a PID namespace of its own, each would
/// kill the other's: hence `hostPID: true` in the DaemonSet.
#[test]
fn the_host_and_the_container_leave_each_others_executions_alone() {
    let Some(image) = image() else { return };
    let _suite = SuiteLock::shared();
    let group = TestGroup::create();
    let user = TestUser::create(&[&group]);

    // A local execution on the host, running before the service starts (and collects).
    let mut local = Running::spawn(tollgate().args([
        "run",
        "--",
        "/bin/sh",
        "-c",
        "echo ready; cat >/dev/null; echo local survived",
    ]));
    local.wait_line("ready", HANG_LIMIT);
    let service = Service::start(&image, daemonset_options(), &group, &user, Layout::Plain);

    // An execution of the container's, then the host's gc.
    let mut remote = Running::spawn(&mut service.launch(
        &user,
        TEAM,
        &[
            "/bin/sh",
            "-c",
            "echo ready; cat >/dev/null; echo remote survived",
        ],
    ));
    remote.wait_line("ready", HANG_LIMIT);
    let gc = output(tollgate().arg("gc"), None, HANG_LIMIT);
    assert_eq!(gc.code(), 0, "tollgate gc on the host:\n{}", gc.describe());

    let remote = remote.finish(HANG_LIMIT);
    assert_eq!(
        remote.code(),
        0,
        "the container's execution:\n{}",
        remote.describe()
    );
    assert!(
        remote.stdout.contains("remote survived"),
        "{}",
        remote.describe()
    );
    let local = local.finish(HANG_LIMIT);
    assert_eq!(
        local.code(),
        0,
        "the host's execution:\n{}",
        local.describe()
    );
    assert!(
        local.stdout.contains("local survived"),
        "{}",
        local.describe()
    );
}

/// Every path the DaemonSet mounts over, runs or names is in the image: the entry point,
/// the readiness probe's program, the directories the volumes are mounted on (or their
/// parents, for a file bound by subPath), and the node configuration's directories.
#[test]
fn the_image_holds_every_path_the_daemonset_names() {
    let Some(image) = image() else { return };
    let daemonset = kubernetes_object("DaemonSet", "tollgate");
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let mut checks = vec![
        "test -x /usr/local/bin/tollgate".to_owned(),
        "test -d /etc/tollgate/secrets && test \"$(stat -c %a /etc/tollgate/secrets)\" = 700"
            .into(),
        "test -s /etc/ssl/certs/ca-certificates.crt".into(),
        "test -x /usr/sbin/nft".into(),
        "test -x /usr/bin/python3".into(),
    ];
    let probe = container["readinessProbe"]["exec"]["command"][0]
        .as_str()
        .expect("a probe");
    checks.push(format!("test -x {probe}"));
    for mount in container["volumeMounts"].as_sequence().expect("mounts") {
        let path = Path::new(mount["mountPath"].as_str().expect("a path"));
        let dir = if mount["subPath"].as_str().is_some() {
            path.parent().expect("a parent")
        } else {
            path
        };
        // A subPath's own directory under the secrets root is made by the runtime.
        let dir = if dir.starts_with("/etc/tollgate/secrets") {
            Path::new("/etc/tollgate/secrets")
        } else {
            dir
        };
        checks.push(format!("test -d {}", dir.display()));
    }
    let script = checks
        .iter()
        .map(|check| format!("{check} || echo \"missing: {}\"", check.replace('"', "'")))
        .collect::<Vec<_>>()
        .join("\n");
    let ran = podman(&[
        "run",
        "--rm",
        "--runtime=runc",
        "--network=none",
        "--ulimit=nofile=1024:4096",
        "--ulimit=nproc=1024:4096",
        "--entrypoint=/bin/sh",
        &image,
        "-c",
        &script,
    ]);
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout),
        "",
        "the image lacks paths the DaemonSet needs"
    );
    // The entry point and the default command are the service's.
    let config = podman(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}} {{json .Config.Cmd}}",
        &image,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&config.stdout).trim(),
        r#"["/usr/local/bin/tollgate"] ["serve"]"#
    );
}

/// The shipped binary has no layer switches: told to drop the network namespace, it still
/// builds one (the sandbox sees loopback only), where the test build does drop it.
#[test]
fn the_dist_binary_ignores_the_test_layer_switches() {
    let _suite = SuiteLock::shared();
    let dist = images::dist_binary();
    let interfaces = |binary: &Path| {
        let ran = output(
            Command::new(binary)
                .env("TOLLGATE_TEST_DISABLE_LAYERS", "netns")
                .args(["run", "--", "/bin/cat", "/proc/net/dev"]),
            None,
            HANG_LIMIT,
        );
        assert_eq!(ran.code(), 0, "{}", ran.describe());
        ran.stdout
            .lines()
            .skip(2)
            .filter_map(|line| line.split(':').next())
            .map(|name| name.trim().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        interfaces(&dist),
        ["lo"],
        "the dist binary dropped its network namespace"
    );
    let test_build = interfaces(&tollgate_path());
    assert!(
        test_build.len() > 1,
        "the test build (with the switches) should see the host's interfaces: {test_build:?}"
    );
}

/// `build.sh` refuses a binary built with the layer switches (the test build is one).
#[test]
fn the_image_build_refuses_a_binary_with_the_test_layer_switches() {
    if let Err(why) = images::podman_usable() {
        eprintln!("skipping: podman cannot run containers here: {why}");
        return;
    }
    let refused = output(
        Command::new("/bin/bash")
            .arg(images::worker_build_dir().join("build.sh"))
            .arg("localhost/tollgate-worker:never")
            .arg(tollgate_path()),
        None,
        HANG_LIMIT,
    );
    assert_ne!(refused.code(), 0, "{}", refused.describe());
    assert!(
        refused.stderr.contains("test-only layer switches"),
        "{}",
        refused.describe()
    );
    assert!(
        !podman(&["image", "exists", "localhost/tollgate-worker:never"])
            .status
            .success()
    );
}
