//! `tollgate policy check DIR`: a node's team policy directory, validated the way the node
//! service reads it (`<team>.yaml` files whose `team:` is their name), by the real binary.

use std::os::unix::fs::symlink;
use std::path::Path;
use tollgate_tests::{policy_check as check, Scratch};

fn team(name: &str) -> String {
    format!("version: 1\nteam: {name}\n")
}

#[test]
fn a_directory_of_valid_team_files_is_ok_file_by_file() {
    let scratch = Scratch::new("check-dir-ok");
    let a = scratch.file("data-eng.yaml", &team("data-eng"));
    let b = scratch.file(
        "web.yaml",
        "version: 1\nteam: web\nnetwork:\n  allow:\n    - https://api.example.com\n",
    );
    // Not policies: neither checked nor reported.
    scratch.file("README.md", "the teams of this node\n");
    std::fs::create_dir(scratch.dir.join("notes")).unwrap();
    let (code, stdout, stderr) = check(&[&scratch.dir]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!("{}: ok\n{}: ok\n", a.display(), b.display()),
        "{stderr}"
    );
}

#[test]
fn a_file_whose_team_is_not_its_name_fails_the_directory() {
    let scratch = Scratch::new("check-dir-mismatch");
    let ok = scratch.file("alpha.yaml", &team("alpha"));
    let wrong = scratch.file("beta.yaml", &team("gamma"));
    let (code, stdout, stderr) = check(&[&scratch.dir]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("{}: ok", ok.display())),
        "{stdout}"
    );
    // At the `team:` line, naming both.
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&format!("{}:2:", wrong.display())))
        .unwrap_or_else(|| panic!("no line for beta.yaml at its team: key\n{stdout}"));
    assert!(line.contains("beta") && line.contains("gamma"), "{line}");
    assert!(
        !stdout.contains(&format!("{}: ok", wrong.display())),
        "{stdout}"
    );
}

#[test]
fn each_invalid_file_is_reported_at_its_lines_and_the_others_still_checked() {
    let scratch = Scratch::new("check-dir-invalid");
    let bad = scratch.file(
        "bad.yaml",
        "version: 1\nteam: bad\nnetwork:\n  allow:\n    - host: \"*\"\n",
    );
    // The team module is compiled in a worker process, as the service compiles it.
    let rego = scratch.file(
        "rego.yaml",
        "version: 1\nteam: rego\nrego: |\n  package tollgate.team\n  deny contains msg if {\n",
    );
    let good = scratch.file("good.yaml", &team("good"));
    let (code, stdout, stderr) = check(&[&scratch.dir]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("{}:5:13: ", bad.display())),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with(&format!("{}:", rego.display())) && !l.ends_with(": ok")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}: ok", good.display())),
        "{stdout}"
    );
}

#[test]
fn files_the_service_would_not_read_as_a_team_fail_the_directory() {
    let scratch = Scratch::new("check-dir-misnamed");
    let good = scratch.file("ok.yaml", &team("ok"));
    let yml = scratch.file("ops.yml", &team("ops"));
    let upper = scratch.file("Data_Eng.yaml", &team("data-eng"));
    let (code, stdout, stderr) = check(&[&scratch.dir]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("{}: ok", good.display())),
        "{stdout}"
    );
    let line_of = |path: &Path| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{}: ", path.display())))
            .unwrap_or_else(|| panic!("no line for {}\n{stdout}", path.display()))
            .to_owned()
    };
    assert!(line_of(&yml).contains("ops.yaml"), "{stdout}");
    assert!(line_of(&upper).contains("not a team name"), "{stdout}");
}

#[test]
fn an_empty_directory_says_so_and_exits_2() {
    let scratch = Scratch::new("check-dir-empty");
    scratch.file("README.md", "nothing here yet\n");
    let (code, stdout, stderr) = check(&[&scratch.dir]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.starts_with("tollgate: ") && stderr.contains("no team policy"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn hostile_entries_are_reported_never_read_or_waited_on() {
    let scratch = Scratch::new("check-dir-hostile");
    let good = scratch.file("fine.yaml", &team("fine"));
    let fifo = scratch.dir.join("fifo.yaml");
    let made = std::process::Command::new("/usr/bin/mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let dir = scratch.dir.join("dir.yaml");
    std::fs::create_dir(&dir).unwrap();
    let dangling = scratch.dir.join("gone.yaml");
    symlink(scratch.dir.join("nowhere"), &dangling).unwrap();
    let zero = scratch.dir.join("zero.yaml");
    symlink("/dev/zero", &zero).unwrap();
    let looped = scratch.dir.join("loop.yaml");
    symlink(&looped, &looped).unwrap();
    // 1 GiB, sparse: refused by its size, never read.
    let huge = scratch.dir.join("huge.yaml");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let binary = scratch.dir.join("binary.yaml");
    std::fs::write(&binary, b"version: 1\nteam: \xff\xfe\n").unwrap();
    let (code, stdout, stderr) = check(&[&scratch.dir]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stdout.contains(&format!("{}: ok", good.display())),
        "{stdout}"
    );
    for (path, why) in [
        (&fifo, "not a regular file"),
        (&dir, "not a regular file"),
        (&dangling, "cannot read"),
        (&zero, "not a regular file"),
        (&looped, "cannot read"),
        (&huge, "larger than 1 MiB"),
        (&binary, "UTF-8"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{}: ", path.display())))
            .unwrap_or_else(|| panic!("no line for {}\n{stdout}", path.display()));
        assert!(line.contains(why), "{line}");
    }
}

#[test]
fn a_configmap_directory_is_read_through_its_links_and_its_internals_are_not_files() {
    // How Kubernetes mounts a ConfigMap: each key a link into `..data`, itself a link to a
    // timestamped directory.
    let scratch = Scratch::new("check-dir-configmap");
    let stamp = scratch.dir.join("..2024_01_01_00_00_00.000000001");
    std::fs::create_dir(&stamp).unwrap();
    std::fs::write(stamp.join("alpha.yaml"), team("alpha")).unwrap();
    std::fs::write(stamp.join("beta.yaml"), team("beta")).unwrap();
    symlink(stamp.file_name().unwrap(), scratch.dir.join("..data")).unwrap();
    for key in ["alpha.yaml", "beta.yaml"] {
        symlink(format!("..data/{key}"), scratch.dir.join(key)).unwrap();
    }
    let (code, stdout, stderr) = check(&[&scratch.dir]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!(
            "{}: ok\n{}: ok\n",
            scratch.dir.join("alpha.yaml").display(),
            scratch.dir.join("beta.yaml").display()
        )
    );
}

#[test]
fn directories_and_files_mix_and_a_file_keeps_todays_rules() {
    let scratch = Scratch::new("check-dir-mixed");
    let teams = scratch.dir.join("teams");
    std::fs::create_dir(&teams).unwrap();
    std::fs::write(teams.join("one.yaml"), team("one")).unwrap();
    // A file named on the command line need not be named after its team.
    let loose = scratch.file("draft.yaml", &team("two"));
    let (code, stdout, stderr) = check(&[&teams, &loose]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!(
            "{}: ok\n{}: ok\n",
            teams.join("one.yaml").display(),
            loose.display()
        )
    );
}

#[test]
fn a_directory_secret_outside_the_team_is_refused_as_for_a_file() {
    let scratch = Scratch::new("check-dir-secrets");
    let file = scratch.file(
        "a.yaml",
        "version: 1\nteam: a\nnetwork:\n  allow:\n    - https://api.test\nauth_providers:\n  - name: Tok\n    type: bearer\n    secret: {env: TOLLGATE_SECRET_B_TOK}\n    scope: [https://api.test]\n",
    );
    let (code, stdout, stderr) = check(&[&scratch.dir]);
    assert_eq!(code, Some(2), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!("{}:9:", file.display())) && stdout.contains("TOLLGATE_SECRET_A_"),
        "{stdout}"
    );
}
