#!/usr/bin/env bash
# Builds the OCI image of tollgate's node service (`tollgate serve`) from Debian 12 packages.
#
#   images/worker/build.sh TAG [BINARY]
#
# TAG is the image's name, e.g. localhost/tollgate-worker:0.1.0 (no container registry is
# involved: the image lands in the local podman store; push or `podman save` it yourself).
# BINARY is the tollgate binary to ship, by default target/dist/tollgate of this checkout
# (`cargo build --profile dist -p tollgate`). A binary built with the test-only layer
# switches is refused.
#
# Two layers, so a node that upgrades tollgate downloads only the second:
#   1. the Debian root: bookworm's essential set (the smallest installable Debian: dash, bash,
#      coreutils, util-linux, no apt) with ca-certificates, nftables, python3-minimal and
#      libpython3.11-stdlib, made by mmdebstrap and cached in the local store as
#      localhost/tollgate-worker-base:<hash of this directory>;
#   2. the binary at /usr/local/bin/tollgate, the entry point (`tollgate serve` by default).
# Both are built with `podman build --timestamp`, so the same binary on the same base gives
# the same image id. The base is a function of the mirror's state: rebuild it (delete the
# base tag) to take Debian's point releases and security updates.
#
# Packages come from the Debian mirror this machine's apt uses (asked of apt itself, as
# images/sandbox/build.sh does); TOLLGATE_IMAGE_MIRROR (and TOLLGATE_IMAGE_SECURITY_MIRROR)
# name another one.
#
# The sandboxes the service builds run on this root (the image's /usr, /bin, /lib and /etc,
# read-only), so it is finished like a sandbox root: every file root's and writable by nobody
# else, no setuid, setgid or file capabilities, no device nodes.
set -euo pipefail

SUITE=bookworm
: "${SOURCE_DATE_EPOCH:=1700000000}"
export SOURCE_DATE_EPOCH

# What the image holds beyond Debian's essential set, and why.
PACKAGES=(
  ca-certificates      # upstream TLS verification and the sandboxes' CA bundle
  nftables             # `nft list ruleset` for an operator inside an execution's namespace
  python3-minimal      # sandboxed code is mostly Python, and tollgate's helper
  libpython3.11-stdlib #   (tollgate_http) is Python: urllib, http.client, ssl
)
# Directories the service uses; /etc/tollgate/secrets is root's alone.
SERVICE_DIRS=(etc/tollgate etc/tollgate/teams run/tollgate var/log/tollgate)
# Mount points of the node's trees (cgroups, bpffs) and of what tollgate mounts on in a sandbox.
MOUNT_POINTS=(tmp var/tmp run dev dev/shm dev/pts proc sys etc/ssl/certs)
PRUNED=(usr/share/man usr/share/info usr/share/locale usr/share/lintian usr/share/linda)
# The variable only a binary with the test-only layer switches reads.
TEST_SWITCH=TOLLGATE_TEST_DISABLE_LAYERS

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

log() { printf 'images/worker/build.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

usage() {
  cat >&2 <<'EOF'
usage: images/worker/build.sh TAG [BINARY]
  TAG     the image to create in the local podman store, e.g. localhost/tollgate-worker:0.1.0
  BINARY  the tollgate to ship (default: target/dist/tollgate; cargo build --profile dist -p tollgate)
Needs root, mmdebstrap, getcap and podman (scripts/bootstrap.sh installs them).
EOF
}

# First 16 hex digits of a SHA-256 over this directory's files but the README: the base's tag.
base_hash() {
  (cd "$HERE" && find . -maxdepth 1 -type f ! -name README.md -printf '%f\n' | LC_ALL=C sort \
     | while read -r name; do printf '%s\0' "$name"; cat "$name"; printf '\0'; done) \
    | sha256sum | cut -c1-16
}

# Prints one `deb URI SUITE main` line per bookworm suite the host's apt knows.
package_sources() {
  if [ -n "${TOLLGATE_IMAGE_MIRROR:-}" ]; then
    printf 'deb %s %s main\n' "$TOLLGATE_IMAGE_MIRROR" "$SUITE" "$TOLLGATE_IMAGE_MIRROR" "$SUITE-updates"
    if [ -n "${TOLLGATE_IMAGE_SECURITY_MIRROR:-}" ]; then
      printf 'deb %s %s main\n' "$TOLLGATE_IMAGE_SECURITY_MIRROR" "$SUITE-security"
    fi
    return
  fi
  # shellcheck disable=SC2016 # $(...) are apt's format fields, not the shell's
  apt-get indextargets --no-release-info \
      --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Created-By: Packages' \
    | awk -v suite="$SUITE" '
        $3 == "main" && ($2 == suite || $2 == suite "-updates" || $2 == suite "-security") \
          && !seen[$1 " " $2]++ { print "deb " $1 " " $2 " main" }'
}

# --- the Debian root -----------------------------------------------------------------------

# Removes what belongs to the build host, to a booted system or to nobody's reading.
remove_host_files() {
  local root=$1 dir
  # podman writes the container's own resolv.conf, hostname and hosts at run time.
  rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
  rm -rf "${root:?}/dev" "$root/var/cache/apt" "$root/var/lib/apt/lists"
  find "$root/var/log" -xdev -type f -delete 2>/dev/null || true
  for dir in "${PRUNED[@]}"; do rm -rf "${root:?}/$dir"; done
  if [ -d "$root/usr/share/doc" ]; then
    find "$root/usr/share/doc" -xdev ! -type d ! -name copyright -delete
  fi
}

# Creates the service's directories and the mount points.
make_dirs() {
  local root=$1 dir
  for dir in "${MOUNT_POINTS[@]}" "${SERVICE_DIRS[@]}"; do mkdir -p "$root/$dir"; done
  install -d -m 0700 "$root/etc/tollgate/secrets"
}

# Strips every privilege a file could carry and every write bit but the owner's.
harden() {
  local root=$1 file
  find "$root" -xdev \( -type b -o -type c -o -type p -o -type s \) -delete
  find "$root" -xdev -type f -perm /6000 -printf 'images/worker/build.sh: stripping setuid/setgid: /%P\n' \
    -exec chmod ug-s {} + >&2
  getcap -r "$root" 2>/dev/null | while read -r file _; do
    log "stripping file capabilities: ${file#"$root"}"
    setcap -r "$file"
  done
  chown -R --no-dereference root:root "$root"
  find "$root" -xdev ! -type l -perm /022 -exec chmod go-w {} +
  chmod 0755 "$root"
}

# Fails unless the root holds what the service and its sandboxes need.
verify_root() {
  local root=$1 found
  found=$(find "$root" -xdev \( -perm /6000 -type f -o ! -type l -perm /022 \
            -o ! -user root -o ! -group root -o -type b -o -type c \) -printf '/%P\n')
  [ -z "$found" ] || die "the root still has privileged, foreign or writable files: $(head -5 <<<"$found")"
  [ -z "$(getcap -r "$root" 2>/dev/null)" ] || die "the root still has file capabilities"
  chroot "$root" /bin/sh -c 'true' || die "/bin/sh does not run in the root"
  chroot "$root" /usr/sbin/nft --version >/dev/null || die "nft does not run in the root"
  chroot "$root" /usr/bin/python3 -c 'import ssl, json, http.client, urllib.request' \
    || die "python3 cannot import what an HTTPS request needs"
  [ -s "$root/etc/ssl/certs/ca-certificates.crt" ] || die "the CA certificates are missing"
}

# Writes /etc/tollgate-image: the suite and every package with its version.
write_manifest() {
  local root=$1
  {
    echo "# The root of tollgate's node service image, built by images/worker/build.sh."
    echo "suite $SUITE"
    echo "base $(base_hash)"
    find "$root/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -printf '%f\n' \
      | sed -n 's/%3a/:/g; s/^\([^_]*\)_\([^_]*\)_[^_]*\.deb$/package \1 \2/p' | sort
  } > "$root/etc/tollgate-image"
  chmod 0644 "$root/etc/tollgate-image"
}

# Builds the Debian root in WORK/root and imports it as image $1.
build_base() {
  local tag=$1 work=$2 sources
  sources=$(package_sources)
  [ -n "$sources" ] || die "the host's apt has no Debian $SUITE source: set TOLLGATE_IMAGE_MIRROR=URL"
  local mirrors=() line
  while IFS= read -r line; do mirrors+=("$line"); done <<<"$sources"
  local root=$work/root
  mkdir "$root"
  log "building the Debian root from: $(paste -sd';' <<<"$sources")"
  local include
  include=$(IFS=,; echo "${PACKAGES[*]}")
  mmdebstrap \
    --mode=root --format=directory --variant=essential --include="$include" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt=force-unsafe-io --skip=essential/unlink,cleanup/apt/cache \
    "$SUITE" "$root" "${mirrors[@]}" || die "mmdebstrap failed (its messages are above)"
  write_manifest "$root"
  remove_host_files "$root"
  make_dirs "$root"
  harden "$root"
  verify_root "$root"
  find "$root" -xdev -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  # One layer from the tree, in a stable order with numeric owners.
  tar --sort=name --numeric-owner --xattrs --one-file-system -C "$root" -cf "$work/root.tar" .
  rm -rf --one-file-system "$root"
  printf 'FROM scratch\nADD root.tar /\n' > "$work/Containerfile"
  podman build --quiet --pull=never --network=none --timestamp "$SOURCE_DATE_EPOCH" \
    --tag "$tag" --file "$work/Containerfile" "$work" >/dev/null \
    || die "podman build of the base failed"
  rm -f "$work/root.tar"
}

# --- the service image ---------------------------------------------------------------------

# Builds image $1 from base $2 with binary $3, in WORK $4.
build_service() {
  local tag=$1 base=$2 binary=$3 work=$4 version
  version=$("$binary" --version | awk '{print $2}')
  install -m 0755 "$binary" "$work/tollgate"
  cat > "$work/Containerfile" <<EOF
FROM $base
COPY tollgate /usr/local/bin/tollgate
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.opencontainers.image.title="tollgate node service" \\
      org.opencontainers.image.description="tollgate serve: launches sandboxes for unprivileged callers on /run/tollgate/tollgate.sock" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.licenses="Apache-2.0" \\
      io.tollgate.base="$base"
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve"]
EOF
  podman build --quiet --pull=never --network=none --timestamp "$SOURCE_DATE_EPOCH" \
    --tag "$tag" --file "$work/Containerfile" "$work" >/dev/null \
    || die "podman build of $tag failed"
}

# --- main ----------------------------------------------------------------------------------

main() {
  case "${1:-}" in -h | --help) usage; exit 0 ;; esac
  if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then
    usage
    exit 2
  fi
  local tag=$1 binary=${2:-$REPO/target/dist/tollgate}
  [ "$(id -u)" -eq 0 ] || die "must run as root (the image's files must be root's)"
  local tool
  for tool in mmdebstrap getcap podman; do
    command -v "$tool" >/dev/null || die "$tool is missing: run scripts/bootstrap.sh"
  done
  [ -x "$binary" ] || die "$binary is not an executable: build it with cargo build --profile dist -p tollgate, or name one"
  if grep -q --fixed-strings "$TEST_SWITCH" "$binary"; then
    die "$binary was built with the test-only layer switches ($TEST_SWITCH): ship a binary built without --features test-layer-switches"
  fi

  WORK=$(mktemp -d /var/tmp/tollgate-worker-image.XXXXXX)
  trap 'rm -rf --one-file-system "$WORK"' EXIT
  local start=$SECONDS base
  base=localhost/tollgate-worker-base:$(base_hash)
  if podman image exists "$base"; then
    log "reusing $base"
  else
    mkdir "$WORK/base"
    build_base "$base" "$WORK/base"
    log "built $base in $((SECONDS - start)) s"
  fi
  mkdir "$WORK/service"
  build_service "$tag" "$base" "$binary" "$WORK/service"
  log "built $tag ($(podman image inspect --format '{{.Size}}' "$tag") bytes, id $(podman image inspect --format '{{.Id}}' "$tag" | cut -c1-12)) in $((SECONDS - start)) s"
}

main "$@"
