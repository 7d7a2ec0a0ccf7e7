use super::*;

const GIB: u64 = 1 << 30;

fn request<'a>(
    runtime_dir: Option<&'a Path>,
    shares: &'a [OpenShare],
    tmp_size: u64,
) -> MountRequest<'a> {
    MountRequest {
        root: Root::Host,
        runtime_dir,
        shares,
        tmp_size,
        trust_store: false,
        resolv_conf: false,
    }
}

fn share(path: &str) -> Share {
    Share {
        path: PathBuf::from(path),
        read_only: false,
    }
}

#[test]
fn a_scratch_size_under_a_mebibyte_is_refused_since_zero_means_unlimited() {
    assert!(PrivateMounts::prepare(&request(None, &[], 0)).is_err());
    assert!(PrivateMounts::prepare(&request(None, &[], MIN_TMP_SIZE - 1)).is_err());
    let mounts = PrivateMounts::prepare(&request(None, &[], MIN_TMP_SIZE)).expect("prepare");
    assert_eq!(mounts.tmp_options.to_str(), Ok("mode=1777,size=1048576"));
    assert_eq!(mounts.shm_options.to_str(), Ok("mode=1777,size=67108864"));
}

#[test]
fn the_runtime_directory_must_sit_directly_under_run_tollgate() {
    for wrong in [
        "/run/tollgate",
        "/tmp/abc",
        "/run/tollgate/a/b",
        "/run/other/abc",
    ] {
        assert!(
            PrivateMounts::prepare(&request(Some(Path::new(wrong)), &[], GIB)).is_err(),
            "{wrong}"
        );
    }
}

#[test]
fn a_share_gets_every_directory_of_its_mount_point_created() {
    let root = std::env::temp_dir().join(format!("tollgate-mp-{}", std::process::id()));
    let code = root.join("code");
    std::fs::create_dir_all(&code).expect("dir");
    let shares = open_shares(&[share(code.to_str().unwrap())]).expect("open");
    let mounts = PrivateMounts::prepare(&request(None, &shares, GIB)).expect("prepare");
    let _ = std::fs::remove_dir_all(&root);
    let leaf = root.file_name().unwrap().to_str().unwrap();
    let dirs: Vec<_> = mounts.shares[0]
        .mount_point_dirs
        .iter()
        .map(|d| d.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        dirs,
        [
            "/tmp".to_owned(),
            format!("/tmp/{leaf}"),
            format!("/tmp/{leaf}/code")
        ]
    );
}

#[test]
fn the_system_root_holds_the_system_directories_and_recreates_their_links() {
    let mounts = PrivateMounts::prepare(&MountRequest {
        root: Root::System,
        runtime_dir: None,
        shares: &[],
        tmp_size: GIB,
        trust_store: false,
        resolv_conf: false,
    })
    .expect("prepare");
    let bound: Vec<_> = mounts
        .system
        .iter()
        .map(|a| {
            a.mount_point_dirs
                .last()
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        bound.contains(&"/usr".to_owned()) && bound.contains(&"/etc".to_owned()),
        "{bound:?}"
    );
    for link in &mounts.links {
        let path = Path::new(link.path.to_str().unwrap());
        assert!(std::fs::symlink_metadata(path)
            .unwrap()
            .file_type()
            .is_symlink());
    }
    assert!(!bound
        .iter()
        .any(|b| b == "/home" || b == "/var" || b == "/root"));
}

#[test]
fn paths_are_visible_only_in_the_view() {
    let shares = [share("/tmp/job"), share("/opt/tools")];
    let system = View {
        root: &Root::System,
        shares: &shares,
    };
    for visible in [
        "/usr/bin/python3",
        "/etc/hosts",
        "/tmp/job/main.py",
        "/opt/tools/x",
        "/bin/sh",
        "/tmp",
        "/dev/null",
        "/",
    ] {
        assert_eq!(
            system.invisible_because(Path::new(visible)),
            None,
            "{visible}"
        );
    }
    for invisible in [
        "/run/x/tool",
        "/dev/shm/tool",
        "/proc/self/exe",
        "/sys/x",
        "/tmp/other/main.py",
        "/tmp/jobs/main.py",
        "/var/tmp/x",
        "/home/user/x",
        "/opt/other",
        "/var/lib/x",
        "/root/x",
        "/etc/tollgate/acme.yaml",
    ] {
        assert!(
            system.invisible_because(Path::new(invisible)).is_some(),
            "{invisible}"
        );
    }
    let host = View {
        root: &Root::Host,
        shares: &shares,
    };
    assert!(host.invisible_because(Path::new("/home/user/x")).is_none());
}

#[test]
fn shares_are_mounted_outermost_first_and_never_twice() {
    let p = |s: &str| PathBuf::from(s);
    let shares =
        arrange_shares(&[p("/tmp/a/b/c")], &[p("/tmp/a"), p("/tmp/x/y")]).expect("arranged");
    let order: Vec<_> = shares
        .iter()
        .map(|s| (s.path.to_str().unwrap(), s.read_only))
        .collect();
    assert_eq!(
        order,
        [("/tmp/a", true), ("/tmp/x/y", true), ("/tmp/a/b/c", false)]
    );
    assert!(arrange_shares(&[p("/tmp/a")], &[p("/tmp/a")]).is_err());
    let many: Vec<_> = (0..=MAX_SHARES).map(|i| p(&format!("/tmp/{i}"))).collect();
    assert!(arrange_shares(&many, &[]).is_err());
    assert!(arrange_shares(&many[..MAX_SHARES], &[]).is_ok());
}

#[test]
fn only_existing_directories_outside_kernel_trees_can_be_shared() {
    let dir = std::env::temp_dir().join(format!("tollgate-share-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("f");
    std::fs::write(&file, b"").expect("file");
    assert_eq!(check_share(&dir), Ok(()));
    assert_eq!(check_share(Path::new("/usr/share")), Ok(()));
    for bad in [
        file.clone(),
        dir.join("missing"),
        PathBuf::from("/"),
        PathBuf::from("/run/x"),
        PathBuf::from("/proc/self"),
        PathBuf::from("/sys/fs/cgroup"),
        PathBuf::from("/dev/shm"),
        PathBuf::from("relative/dir"),
        dir.join("../x"),
    ] {
        assert!(check_share(&bad).is_err(), "{}", bad.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_share_through_a_linked_parent_is_refused() {
    let dir = std::env::temp_dir().join(format!("tollgate-share-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let link = dir.join("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("/run", &link).expect("link");
    let error = check_share(&link.join("user")).expect_err("refused");
    assert!(error.contains("symbolic link"), "{error}");
    assert!(open_shares(&[share(link.join("user").to_str().unwrap())]).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_directories_are_reached_through_shares_and_the_system_binds_only() {
    let shares = [share("/tmp/job"), share("/srv/data")];
    let system = View {
        root: &Root::System,
        shares: &shares,
    };
    for reached in ["/tmp/job/out", "/srv/data", "/etc/app", "/usr/share/x"] {
        assert!(system.reaches_host_dir(Path::new(reached)), "{reached}");
    }
    // The sandbox's own /tmp, /run… are other directories with the same names.
    for apart in [
        "/tmp",
        "/tmp/other",
        "/var/tmp",
        "/run/x",
        "/",
        "/srv",
        "/home/u",
        "/etc/tollgate/x",
    ] {
        assert!(!system.reaches_host_dir(Path::new(apart)), "{apart}");
    }
    let image = View {
        root: &Root::Image(PathBuf::from("/srv/img")),
        shares: &[],
    };
    assert!(!image.reaches_host_dir(Path::new("/etc")));
}

#[test]
fn the_files_bound_over_the_roots_need_the_runtime_directory() {
    for (trust_store, resolv_conf) in [(true, false), (false, true)] {
        let error = PrivateMounts::prepare(&MountRequest {
            trust_store,
            resolv_conf,
            ..request(None, &[], GIB)
        })
        .expect_err("no runtime directory");
        assert!(error.to_string().contains("runtime directory"), "{error}");
    }
    let mounts = PrivateMounts::prepare(&request(None, &[], GIB)).expect("prepare");
    assert!(mounts.trust_store.is_none() && mounts.resolv_conf.is_none());
}

#[test]
fn the_trust_stores_are_the_contracts_list() {
    let stores: Vec<&str> = trust_stores::TRUST_STORES
        .iter()
        .map(|path| path.to_str().unwrap())
        .collect();
    assert_eq!(
        stores,
        [
            "/etc/ssl/certs/ca-certificates.crt",
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/ssl/ca-bundle.pem",
            "/etc/pki/tls/cacert.pem",
            "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
            "/etc/ssl/cert.pem",
            "/usr/lib/ssl/cert.pem",
            "/usr/local/share/certs/ca-root-nss.crt",
        ]
    );
}
