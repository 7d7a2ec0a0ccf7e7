#!/usr/bin/env bash
# Installs every prerequisite tollgate needs on a fresh Debian 12 machine (run as root).
# Idempotent: each step checks first, so a second run on a ready machine takes well under a second.
set -euo pipefail

NIGHTLY=nightly-2026-05-20       # rustc 1.97 / LLVM 22: the toolchain bpf-linker 0.10 loads
BPF_LINKER_VERSION=0.10.0        # newer releases need a system LLVM 23
APT_PACKAGES=(
  nftables        # the second wall inside each sandbox namespace (and `nft` for inspection)
  iproute2        # tests build upstream hosts in their own namespaces with `ip netns` + veth
  ca-certificates # system roots for upstream TLS and the sandbox CA bundle
  curl            # a real client inside sandboxes in the test suite
  python3         # /usr/bin/python3: a real client inside sandboxes (root's pyenv shim is unusable there)
  libclang-dev    # bindgen, used by rustables (nftables over netlink) at build time
  bubblewrap      # startup benchmark baseline
  hyperfine       # startup benchmark
  openssl         # test certificates for upstream HTTPS servers
  mmdebstrap      # builds the images/sandbox/ root filesystems (--rootfs) from Debian packages
  libcap2-bin     # getcap/setcap: images/sandbox/build.sh strips file capabilities
  golang-go       # Go 1.19: test clients (http.DefaultClient, a bare http.Transport) built at test time
  python3-aiohttp # aiohttp with default settings (ignores the proxy variables) as a sandboxed client
  wget            # wget (GnuTLS: reads only the system trust store) as a sandboxed client
  bind9-dnsutils  # dig: DNS queries to the sandbox's stub resolver in the transparent-egress tests
  podman          # builds (images/worker/build.sh) and runs the node service's image in worker_image.rs
  runc            # podman's runtime here: crun refuses hybrid cgroup hosts ("cgroups in hybrid mode not supported")
  redis-server    # the shared quota store (#13): the quota tests start their own on free loopback ports
  redis-tools     # redis-cli: the quota tests read and reset the store's keys
  python3-venv    # the test venv below (HTTP/2, gRPC and WebSocket clients from PyPI)
  nghttp2-client  # h2load: the HTTP/2 benchmark (scripts/bench-h2.sh)
)

log() { printf 'bootstrap: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "must run as root (it installs Debian packages and tollgate needs root to build sandboxes)"
  exit 1
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ " ${missing[*]} " == *" redis-server "* ]]; then
    # The package starts and enables its own server on 127.0.0.1:6379. Nothing here needs a
    # standing Redis (the tests start theirs), so leave none running or starting at boot;
    # only right after installing it, so a re-run never undoes an operator's choice.
    log "stopping and disabling the packaged redis-server service"
    if [ -d /run/systemd/system ]; then
      systemctl disable --now redis-server.service >/dev/null 2>&1 || true
    else
      service redis-server stop >/dev/null 2>&1 || true
      update-rc.d redis-server disable >/dev/null 2>&1 || true
    fi
  fi
fi
if [ ! -x /usr/bin/node ]; then
  log "installing nodejs (a real client inside sandboxes in the test suite)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs >/dev/null
fi

if ! command -v rustup >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/rustup" ]; then export PATH="$HOME/.cargo/bin:$PATH"; else
    log "rustup not found: install a Rust toolchain with rustup first"; exit 1; fi
fi
if ! rustup run "$NIGHTLY" rustc --print sysroot >/dev/null 2>&1 \
   || [ ! -d "$(rustup run "$NIGHTLY" rustc --print sysroot)/lib/rustlib/src/rust/library" ]; then
  log "installing Rust $NIGHTLY with rust-src (builds the eBPF programs)"
  rustup toolchain install "$NIGHTLY" --profile minimal -c rust-src >/dev/null
fi
if ! bpf-linker --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
  log "installing bpf-linker $BPF_LINKER_VERSION (about 2 minutes)"
  cargo install "bpf-linker@$BPF_LINKER_VERSION" --locked --quiet
fi
# The test venv: HTTP/2, gRPC and WebSocket clients and servers from PyPI, pinned in
# scripts/lib/test-venv-requirements.txt. Under /usr, which every sandbox can read; rebuilt
# only when the pins change (the copy of the pins inside it says which it was built from).
VENV=/usr/local/lib/tollgate-tests/venv
PINS="$(dirname "$0")/lib/test-venv-requirements.txt"
if ! cmp -s "$PINS" "$VENV/requirements.txt" 2>/dev/null; then
  log "building the test venv at $VENV (HTTP/2, gRPC, WebSocket clients from PyPI)"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$PINS"
  cp "$PINS" "$VENV/requirements.txt"
  chmod -R a+rX "$VENV"
fi
log "ready"
