//! Which walls an execution builds. Release builds always build all three.
//!
//! The escape suite proves each wall holds alone by switching the others off. That switch
//! exists only in builds with the `test-layer-switches` cargo feature (enabled by the test
//! crate's dev-dependency, never by a release build): a shipped binary has no flag and no
//! environment variable that weakens a sandbox.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layers {
    /// A fresh network namespace with loopback only.
    pub netns: bool,
    /// The nftables table inside that namespace.
    pub nftables: bool,
    /// The eBPF cgroup programs.
    pub bpf: bool,
    /// The sandbox's own root: a new root holding only the system directories, the private
    /// mounts and the shares (off: the host's tree with the private mounts on top).
    pub root: bool,
    /// Landlock rules matching the mount view, where the kernel has Landlock.
    pub landlock: bool,
}

impl Layers {
    pub const ALL: Layers = Layers {
        netns: true,
        nftables: true,
        bpf: true,
        root: true,
        landlock: true,
    };

    /// The walls for this build: all of them, unless a test build was asked to drop some.
    pub fn for_this_build() -> Layers {
        #[cfg(feature = "test-layer-switches")]
        {
            if let Ok(list) = std::env::var("TOLLGATE_TEST_DISABLE_LAYERS") {
                let mut layers = Layers::ALL;
                for name in list.split(',').map(str::trim) {
                    match name {
                        "netns" => {
                            layers.netns = false;
                            // nftables lives in the sandbox namespace.
                            layers.nftables = false;
                        }
                        "nft" => layers.nftables = false,
                        "bpf" => layers.bpf = false,
                        "root" => layers.root = false,
                        "landlock" => layers.landlock = false,
                        _ => {}
                    }
                }
                return layers;
            }
        }
        Layers::ALL
    }
}
