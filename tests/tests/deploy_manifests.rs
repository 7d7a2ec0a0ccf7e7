//! The deployment files agree with tollgate and with each other: the Kubernetes manifests
//! (`images/kubernetes/`) parse, every flag they and the systemd unit pass exists in the
//! real binary's `--help`, the node configuration and the team policies they ship load in
//! tollgate itself, every path the DaemonSet mounts is one the node configuration or
//! tollgate names, the platform pod may launch and is not privileged, and the unit passes
//! `systemd-analyze verify`.
//!
//! That every path exists in the image is `worker_image.rs`'s (it needs the image).

use std::{
    collections::BTreeSet,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_yaml::Value;
use tollgate_tests::{
    images::{
        kubernetes_dir, kubernetes_documents, kubernetes_node_yaml, kubernetes_object, systemd_unit,
    },
    sandbox::output,
    tollgate, tollgate_path, Scratch,
};

/// Longest a `tollgate --help` or `--check-config` may take: a guard against a hang.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// What the DaemonSet's container runs: the image's entry point and the container's args.
const ENTRYPOINT: &str = "/usr/local/bin/tollgate";

fn daemonset() -> Value {
    kubernetes_object("DaemonSet", "tollgate")
}

fn service_container(daemonset: &Value) -> Value {
    let containers = daemonset["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("the DaemonSet has containers");
    assert_eq!(containers.len(), 1, "the DaemonSet runs one container");
    containers[0].clone()
}

fn platform_pod() -> Value {
    kubernetes_object("Pod", "sandboxed-job")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|item| item.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The node configuration of the ConfigMap, parsed.
fn node_yaml() -> Value {
    serde_yaml::from_str(&kubernetes_node_yaml()).expect("node.yaml parses")
}

/// A mount of `container` at exactly `path`.
fn mount_at(container: &Value, path: &str) -> Option<Value> {
    container["volumeMounts"]
        .as_sequence()
        .expect("volume mounts")
        .iter()
        .find(|mount| mount["mountPath"].as_str() == Some(path))
        .cloned()
}

/// The volume of `pod_spec` called `name`.
fn volume(pod_spec: &Value, name: &str) -> Value {
    pod_spec["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|volume| volume["name"].as_str() == Some(name))
        .cloned()
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// A duration of node.yaml's or a unit's spelling (`30s`, `1m`) in seconds.
fn seconds(text: &str) -> u64 {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("a duration: {text}"));
    match unit {
        "" | "s" => number,
        "m" | "min" => number * 60,
        "h" => number * 3600,
        _ => panic!("a duration with an unknown unit: {text}"),
    }
}

#[test]
fn every_manifest_parses_and_names_what_it_is() {
    let documents = kubernetes_documents();
    assert!(
        documents.len() >= 6,
        "the manifests hold {} documents",
        documents.len()
    );
    for (file, document) in &documents {
        let kind = document["kind"].as_str();
        assert!(
            document["apiVersion"].as_str().is_some() && kind.is_some(),
            "{}: a document without apiVersion and kind",
            file.display()
        );
        if kind != Some("Kustomization") {
            assert!(
                document["metadata"]["name"].as_str().is_some(),
                "{}: a {kind:?} without a name",
                file.display()
            );
        }
    }
    // kustomization.yaml lists every manifest of the service (not the example platform pod),
    // and only files that exist.
    let kustomization = kubernetes_object_of_kind("Kustomization");
    let listed: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    let present: BTreeSet<String> = documents
        .iter()
        .map(|(file, _)| file.file_name().unwrap().to_string_lossy().into_owned())
        .filter(|name| name != "kustomization.yaml" && name != "platform-pod.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml's resources");
}

fn kubernetes_object_of_kind(kind: &str) -> Value {
    let mut found = kubernetes_documents()
        .into_iter()
        .filter(|(_, document)| document["kind"].as_str() == Some(kind));
    let (_, document) = found.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(found.next().is_none(), "more than one {kind}");
    document
}

/// Every `tollgate` command line the deployment files hold: (where, argv after the binary).
fn deployment_commands() -> Vec<(String, Vec<String>)> {
    let mut commands = Vec::new();
    let daemonset = daemonset();
    let container = service_container(&daemonset);
    assert!(
        container["command"].is_null(),
        "the DaemonSet keeps the image's entry point ({ENTRYPOINT})"
    );
    commands.push(("the DaemonSet's args".into(), strings(&container["args"])));
    let probe = strings(&container["readinessProbe"]["exec"]["command"]);
    assert_eq!(
        probe.first().map(String::as_str),
        Some(ENTRYPOINT),
        "the readiness probe"
    );
    commands.push(("the readiness probe".into(), probe[1..].to_vec()));
    let pod = platform_pod();
    let job = strings(&pod["spec"]["containers"][0]["command"]);
    assert_eq!(
        job.first().map(String::as_str),
        Some(ENTRYPOINT),
        "the platform pod's command"
    );
    commands.push(("the platform pod".into(), job[1..].to_vec()));
    let unit = fs::read_to_string(systemd_unit()).expect("read the unit");
    for line in unit.lines().filter(|line| line.starts_with("ExecStart")) {
        let (_, command) = line.split_once('=').expect("ExecStart=…");
        let argv: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        assert_eq!(argv[0], ENTRYPOINT, "the unit's {line}");
        commands.push((format!("the unit's {line}"), argv[1..].to_vec()));
    }
    commands
}

#[test]
fn every_flag_the_deployment_passes_exists_in_tollgate() {
    for (place, argv) in deployment_commands() {
        let subcommand = argv
            .first()
            .unwrap_or_else(|| panic!("{place}: no subcommand"));
        let help = output(tollgate().args([subcommand, "--help"]), None, COMMAND_LIMIT);
        assert_eq!(
            help.code(),
            0,
            "{place}: tollgate {subcommand} --help\n{}",
            help.describe()
        );
        // Flags up to `--`; after it, the sandboxed command's own arguments.
        for flag in argv
            .iter()
            .take_while(|arg| arg.as_str() != "--")
            .filter(|arg| arg.starts_with("--"))
        {
            let name = flag.split('=').next().expect("a flag");
            let listed = help
                .stdout
                .split(|c: char| c.is_whitespace() || c == ',')
                .any(|word| word == name);
            assert!(
                listed,
                "{place} passes {name}, which `tollgate {subcommand} --help` does not list:\n{}",
                help.stdout
            );
        }
    }
}

#[test]
fn the_node_configuration_of_the_configmap_loads() {
    let scratch = Scratch::new("deploy-node");
    let file = scratch.dir.join("node.yaml");
    fs::write(&file, kubernetes_node_yaml()).expect("write node.yaml");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).expect("chmod");
    let check = output(
        tollgate()
            .arg("serve")
            .arg("--check-config")
            .arg("--config")
            .arg(&file),
        None,
        COMMAND_LIMIT,
    );
    assert_eq!(
        check.code(),
        0,
        "tollgate serve --check-config:\n{}",
        check.describe()
    );
}

/// The team ConfigMap's keys as the DaemonSet mounts them, with each team's Secret keys
/// laid out as the DaemonSet mounts them (one file per key, root's, mode 0400), checked by
/// `tollgate policy check DIR`: every team file valid, named after its team, and every file
/// secret where `run` will look for it.
#[test]
fn the_team_policies_of_the_configmap_pass_policy_check_with_the_mounted_secrets() {
    let scratch = Scratch::new("deploy-teams");
    let teams = scratch.dir.join("teams");
    let secrets = scratch.dir.join("secrets");
    fs::create_dir_all(&teams).expect("mkdir teams");
    fs::create_dir_all(&secrets).expect("mkdir secrets");
    fs::set_permissions(&secrets, fs::Permissions::from_mode(0o700)).expect("chmod");
    let configmap = kubernetes_object("ConfigMap", "tollgate-teams");
    let data = configmap["data"]
        .as_mapping()
        .expect("the teams ConfigMap has data");
    assert!(!data.is_empty(), "the teams ConfigMap holds no team");
    for (key, text) in data {
        let key = key.as_str().expect("a key");
        fs::write(teams.join(key), text.as_str().expect("a policy")).expect("write a team");
    }
    let container = service_container(&daemonset());
    let mut secret_files = 0;
    for mount in container["volumeMounts"].as_sequence().expect("mounts") {
        let path = mount["mountPath"].as_str().expect("a mount path");
        let Some(relative) = path.strip_prefix("/etc/tollgate/secrets/") else {
            continue;
        };
        let file = secrets.join(relative);
        fs::create_dir_all(file.parent().expect("a team directory")).expect("mkdir");
        fs::write(&file, "a-token").expect("write a secret");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o400)).expect("chmod");
        secret_files += 1;
    }
    assert!(secret_files > 0, "the DaemonSet mounts no team secret");
    let check = output(
        tollgate()
            .args(["policy", "check"])
            .arg(&teams)
            .arg("--secrets-dir")
            .arg(&secrets),
        None,
        COMMAND_LIMIT,
    );
    assert_eq!(
        check.code(),
        0,
        "tollgate policy check:\n{}",
        check.describe()
    );
}

#[test]
fn the_daemonset_mounts_what_the_node_configuration_and_tollgate_use() {
    let daemonset = daemonset();
    let pod_spec = &daemonset["spec"]["template"]["spec"];
    let container = service_container(&daemonset);
    let node = node_yaml();

    // The walls need the host's trees, not the pod's: its cgroup hierarchy, its bpffs (pins
    // shared with the host, Bidirectional), its PID namespace (execution ids are pids) and
    // its uid lease directory.
    assert_eq!(pod_spec["hostPID"].as_bool(), Some(true), "hostPID");
    assert_eq!(
        container["securityContext"]["privileged"].as_bool(),
        Some(true),
        "privileged"
    );
    for (path, propagation) in [
        ("/sys/fs/cgroup", None),
        ("/sys/fs/bpf", Some("Bidirectional")),
        ("/run/tollgate", None),
        ("/run/tollgate-users", None),
    ] {
        let mount = mount_at(&container, path).unwrap_or_else(|| panic!("{path} is not mounted"));
        let source = volume(pod_spec, mount["name"].as_str().expect("a name"));
        assert_eq!(
            source["hostPath"]["path"].as_str(),
            Some(path),
            "{path} comes from the host's {path}"
        );
        assert_eq!(
            mount["mountPropagation"].as_str(),
            propagation,
            "{path}'s propagation"
        );
        assert_ne!(mount["readOnly"].as_bool(), Some(true), "{path} is written");
    }

    // Every path node.yaml names is where the DaemonSet puts it.
    let socket = Path::new(node["socket"]["path"].as_str().expect("socket.path"));
    assert_eq!(
        socket.parent(),
        Some(Path::new("/run/tollgate")),
        "the socket is in the mounted /run/tollgate"
    );
    let teams = node["teams_dir"].as_str().expect("teams_dir");
    let teams_mount =
        mount_at(&container, teams).unwrap_or_else(|| panic!("teams_dir {teams} is not mounted"));
    assert!(
        volume(pod_spec, teams_mount["name"].as_str().unwrap())["configMap"]["name"].as_str()
            == Some("tollgate-teams"),
        "teams_dir holds the tollgate-teams ConfigMap"
    );
    let audit = Path::new(node["audit"].as_str().expect("audit"));
    let logs = audit
        .parent()
        .expect("the audit file's directory")
        .to_str()
        .unwrap();
    assert!(
        mount_at(&container, logs).is_some(),
        "the launch audit's directory {logs} is not mounted"
    );
    let config_args = strings(&container["args"]);
    let config_path = config_args
        .iter()
        .skip_while(|arg| arg.as_str() != "--config")
        .nth(1)
        .expect("the DaemonSet passes --config");
    let config_mount = mount_at(&container, config_path).expect("the --config file is mounted");
    assert_eq!(
        config_mount["subPath"].as_str(),
        Some("node.yaml"),
        "--config is node.yaml of the ConfigMap"
    );

    // Team secrets: under secrets_dir/<team>/, one file per key (a Secret volume's files are
    // symbolic links, and tollgate follows none to a secret), from Secrets of mode 0400.
    let secrets_dir = node["secrets_dir"].as_str().expect("secrets_dir");
    let configmap = kubernetes_object("ConfigMap", "tollgate-teams");
    let team_names: BTreeSet<String> = configmap["data"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|key| key.as_str().unwrap().trim_end_matches(".yaml").to_owned())
        .collect();
    for mount in container["volumeMounts"].as_sequence().unwrap() {
        let path = Path::new(mount["mountPath"].as_str().unwrap());
        let source = volume(pod_spec, mount["name"].as_str().unwrap());
        if let Some(secret) = source.get("secret") {
            let relative = path.strip_prefix(secrets_dir).unwrap_or_else(|_| {
                panic!(
                    "a Secret is mounted at {}, outside secrets_dir {secrets_dir}",
                    path.display()
                )
            });
            let team = relative
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_str()
                .unwrap();
            assert!(team_names.contains(team), "{} is no team's", path.display());
            assert!(
                mount["subPath"].as_str().is_some(),
                "{} is a whole Secret volume: mount each key with subPath",
                path.display()
            );
            assert_eq!(
                secret["defaultMode"].as_u64(),
                Some(0o400),
                "{}'s Secret mode",
                path.display()
            );
        }
    }

    // Metrics: the address node.yaml listens on is the container's port and the scrape
    // annotations' port, on the pod's address (not loopback: Prometheus scrapes the pod IP).
    let metrics = node["metrics"].as_str().expect("metrics");
    let (host, port) = metrics.rsplit_once(':').expect("HOST:PORT");
    assert_eq!(host, "0.0.0.0", "metrics must listen on the pod's address");
    let port: u64 = port.parse().expect("a port");
    let ports = container["ports"].as_sequence().expect("ports");
    assert!(
        ports
            .iter()
            .any(|p| p["containerPort"].as_u64() == Some(port)),
        "container port {port}"
    );
    let annotations = &daemonset["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));

    // Shutdown: Kubernetes waits longer than the service lets executions finish.
    let grace = seconds(node["shutdown_grace"].as_str().expect("shutdown_grace"));
    let termination = pod_spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(termination > grace + 5, "terminationGracePeriodSeconds {termination} must exceed shutdown_grace {grace} with room for the teardown");
}

#[test]
fn the_platform_pod_is_unprivileged_and_may_launch_for_its_team() {
    let pod = platform_pod();
    let spec = &pod["spec"];
    let container = &spec["containers"][0];
    assert_eq!(
        spec["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    assert!(spec["hostPID"].as_bool() != Some(true) && spec["hostNetwork"].as_bool() != Some(true));
    let security = &container["securityContext"];
    assert_ne!(
        security["privileged"].as_bool(),
        Some(true),
        "the platform pod is not privileged"
    );
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    // It sees the socket's directory only, read-only.
    let mounts = container["volumeMounts"].as_sequence().expect("mounts");
    assert_eq!(
        mounts.len(),
        1,
        "the platform pod mounts the socket's directory only"
    );
    assert_eq!(mounts[0]["readOnly"].as_bool(), Some(true));
    let mounted = mounts[0]["mountPath"].as_str().unwrap();

    let command = strings(&container["command"]);
    let flag = |name: &str| {
        command
            .iter()
            .take_while(|arg| arg.as_str() != "--")
            .skip_while(|arg| arg.as_str() != name)
            .nth(1)
            .unwrap_or_else(|| panic!("the platform pod passes no {name}"))
            .clone()
    };
    let node = node_yaml();
    let socket = flag("--connect");
    assert_eq!(
        Some(socket.as_str()),
        node["socket"]["path"].as_str(),
        "--connect is node.yaml's socket"
    );
    assert!(
        Path::new(&socket).starts_with(mounted),
        "--connect {socket} is not in the mounted {mounted}"
    );
    // Its uid is a caller of node.yaml allowed the team it asks for, and its group is the
    // socket's (mode 0660): it can connect, and the service lets it launch.
    let uid = spec["securityContext"]["runAsUser"]
        .as_u64()
        .expect("runAsUser");
    let gid = spec["securityContext"]["runAsGroup"]
        .as_u64()
        .expect("runAsGroup");
    assert_eq!(
        node["socket"]["group"].as_u64(),
        Some(gid),
        "the socket's group is the pod's"
    );
    assert_eq!(node["socket"]["mode"].as_str(), Some("0660"));
    let team = flag("--team");
    let allowed = node["callers"]
        .as_sequence()
        .expect("callers")
        .iter()
        .any(|caller| {
            caller["uid"].as_u64() == Some(uid) && strings(&caller["teams"]).contains(&team)
        });
    assert!(
        allowed,
        "node.yaml lets no caller of uid {uid} launch for {team}"
    );
    let daemonset = daemonset();
    assert_eq!(
        pod["spec"]["containers"][0]["image"],
        service_container(&daemonset)["image"],
        "the platform pod's client is the service's own binary"
    );
    let host = volume(spec, mounts[0]["name"].as_str().unwrap());
    assert_eq!(host["hostPath"]["path"].as_str(), Some(mounted));
}

/// The unit as systemd reads it (`systemd-analyze verify`: every directive known, every
/// value valid, the binary there and executable), with no warning at all; the real binary
/// stands at the unit's path in a mount namespace of the test's own.
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = systemd_unit();
    let script = format!(
        "set -e; mount -t tmpfs tmpfs /usr/local/bin; cp {binary} {ENTRYPOINT}; \
         exec systemd-analyze verify --man=no {unit}",
        binary = tollgate_path().display(),
        unit = unit.display(),
    );
    let verified = output(
        Command::new("unshare").args([
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            &script,
        ]),
        None,
        COMMAND_LIMIT,
    );
    assert!(
        verified.status.success()
            && verified.stdout.trim().is_empty()
            && verified.stderr.trim().is_empty(),
        "systemd-analyze verify {}:\n{}",
        unit.display(),
        verified.describe()
    );
}

/// What the unit must not say, and why: each of these, inherited by every sandbox the
/// service builds, would break executions or make them differ from a local run.
#[test]
fn the_systemd_unit_leaves_the_sandboxes_what_a_local_run_gives_them() {
    let unit = fs::read_to_string(systemd_unit()).expect("read the unit");
    let directives: Vec<(&str, &str)> = unit
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect();
    let value = |key: &str| directives.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    for (key, why) in [
        (
            "RestrictNamespaces",
            "systemd answers clone3 with ENOSYS, and each sandbox starts with clone3",
        ),
        ("MemoryDenyWriteExecute", "no JIT could run in a sandbox"),
        (
            "ProtectControlGroups",
            "executions' cgroups are created under /sys/fs/cgroup",
        ),
        (
            "ProtectKernelTunables",
            "/sys (and so bpffs and cgroupfs) would be read-only",
        ),
        (
            "PrivateDevices",
            "the sandboxes' /dev and terminals come from the service's",
        ),
        ("ProtectHome", "share roots under /home would be empty"),
        (
            "SystemCallFilter",
            "the service mounts, unshares and loads eBPF; sandboxes filter their own",
        ),
        (
            "OOMScoreAdjust",
            "the sandboxes' init processes would inherit it",
        ),
        (
            "LockPersonality",
            "the sandboxes allow the personalities a local run allows",
        ),
        (
            "Delegate",
            "executions' cgroups are at the hierarchy's root, not under the unit",
        ),
    ] {
        assert!(value(key).is_none(), "the unit sets {key}=: {why}");
    }
    assert_eq!(
        value("ProtectSystem"),
        Some("full"),
        "strict would make every --share read-only"
    );
    assert_eq!(
        value("KillMode"),
        Some("mixed"),
        "SIGTERM to the service only: it ends executions itself"
    );
    let stop = seconds(value("TimeoutStopSec").expect("TimeoutStopSec"));
    let grace = seconds(
        node_yaml()["shutdown_grace"]
            .as_str()
            .expect("shutdown_grace"),
    );
    assert!(
        stop > grace + 5,
        "TimeoutStopSec {stop} must exceed shutdown_grace {grace}"
    );
    // The unit's families are the sandboxes' own (seccomp SOCKET_FAMILIES): no difference.
    assert_eq!(
        value("RestrictAddressFamilies"),
        Some("AF_UNIX AF_INET AF_INET6 AF_NETLINK")
    );
}

/// The directory the manifests are read from exists in this checkout (a moved directory
/// would otherwise make every test above fail on a missing file).
#[test]
fn the_manifests_are_where_the_docs_say() {
    let dir: PathBuf = kubernetes_dir();
    assert!(dir.join("daemonset.yaml").is_file(), "{}", dir.display());
    let deploy = fs::read_to_string(tollgate_tests::repo_root().join("docs/deploy.md"))
        .expect("docs/deploy.md");
    for name in [
        "images/kubernetes",
        "images/systemd/tollgate.service",
        "images/worker/build.sh",
    ] {
        assert!(
            deploy.contains(name),
            "docs/deploy.md does not mention {name}"
        );
    }
}
