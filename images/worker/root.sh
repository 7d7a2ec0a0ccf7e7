#!/usr/bin/env bash
# Builds the Debian 12 (bookworm) root filesystem of tollgate's node service image.
#
#   images/worker/root.sh OUTDIR
#
# images/worker/build.sh calls it and makes the image's first layer of OUTDIR; OUTDIR must
# not exist, and appears only when the build succeeded.
#
# What is inside: Debian's essential set (the smallest installable Debian: dash, bash,
# coreutils, util-linux, dpkg, perl-base; no apt, no init), and:
#   ca-certificates       upstream TLS verification, and the CA bundle sandboxes trust
#   nftables              `nft` for an operator looking into an execution's namespace
#   python3-minimal,      sandboxed code is mostly Python, and tollgate's in-sandbox helper
#   libpython3.11-stdlib  (tollgate_http) is Python: urllib, http.client, ssl, json
# The sandboxes the service builds run on this root (its /usr, /bin, /lib and /etc, bound
# read-only), so it is finished like images/sandbox/ roots: every file root's and writable
# by nobody else, no setuid or setgid file, no file capabilities, no device nodes, none of
# the build host's files; /etc/tollgate-image lists every package with its version.
#
# Packages come from the Debian mirror this machine's apt uses; TOLLGATE_IMAGE_MIRROR (and
# TOLLGATE_IMAGE_SECURITY_MIRROR) name another. TOLLGATE_IMAGE_EXTRA_PACKAGES (comma-separated)
# adds packages: what a team's sandboxed code needs beyond Python, or systemd for a test
# image of the systemd unit (tests/tests/systemd_unit.rs). SOURCE_DATE_EPOCH is fixed and every
# timestamp clamped to it: two builds from the same mirror state give the same tree.
set -euo pipefail

SUITE=bookworm
: "${SOURCE_DATE_EPOCH:=1700000000}"
export SOURCE_DATE_EPOCH

PACKAGES=ca-certificates,nftables,python3-minimal,libpython3.11-stdlib${TOLLGATE_IMAGE_EXTRA_PACKAGES:+,$TOLLGATE_IMAGE_EXTRA_PACKAGES}
# The service's directories (the secrets and the uid leases are made root's alone below) and the
# mount points of the node's trees and of what tollgate mounts on in a sandbox.
DIRS=(etc/tollgate etc/tollgate/teams run/tollgate var/log/tollgate
      tmp var/tmp run dev dev/shm dev/pts proc sys sys/fs/cgroup sys/fs/bpf etc/ssl/certs)
PRUNED=(usr/share/man usr/share/info usr/share/locale usr/share/lintian usr/share/linda)

log() { printf 'images/worker/root.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# Prints one `deb URI SUITE main` line per bookworm suite the host's apt knows (bookworm,
# bookworm-updates, bookworm-security), or the TOLLGATE_IMAGE_MIRROR ones.
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

# Writes /etc/tollgate-image from the names of the package files mmdebstrap downloaded.
write_manifest() {
  local root=$1
  {
    echo "# The root of tollgate's node service image, built by images/worker/root.sh."
    echo "suite $SUITE"
    echo "script-sha256 $(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
    echo "packages $PACKAGES"
    find "$root/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -printf '%f\n' \
      | sed -n 's/%3a/:/g; s/^\([^_]*\)_\([^_]*\)_[^_]*\.deb$/package \1 \2/p' | sort
  } > "$root/etc/tollgate-image"
  chmod 0644 "$root/etc/tollgate-image"
}

# Removes what belongs to the build host, to a booted system, or to nobody's reading.
remove_host_files() {
  local root=$1 dir
  # The container runtime writes the container's own resolv.conf, hostname and hosts.
  rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
  rm -rf "${root:?}/dev" "$root/var/cache/apt" "$root/var/lib/apt/lists"
  find "$root/var/log" -xdev -type f -delete 2>/dev/null || true
  for dir in "${PRUNED[@]}"; do rm -rf "${root:?}/$dir"; done
  if [ -d "$root/usr/share/doc" ]; then
    find "$root/usr/share/doc" -xdev ! -type d ! -name copyright -delete
  fi
}

# Strips every privilege a file could carry and every write bit but the owner's.
harden() {
  local root=$1 file
  find "$root" -xdev \( -type b -o -type c -o -type p -o -type s \) -delete
  find "$root" -xdev -type f -perm /6000 -printf 'images/worker/root.sh: stripping setuid/setgid: /%P\n' \
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
verify() {
  local root=$1 found
  found=$(find "$root" -xdev \( -perm /6000 -type f -o ! -type l -perm /022 \
            -o ! -user root -o ! -group root -o -type b -o -type c \) -printf '/%P\n')
  [ -z "$found" ] || die "the root still has privileged, foreign or writable files: $(head -5 <<<"$found")"
  [ -z "$(getcap -r "$root" 2>/dev/null)" ] || die "the root still has file capabilities"
  chroot "$root" /bin/sh -c true || die "/bin/sh does not run in the root"
  chroot "$root" /usr/sbin/nft --version >/dev/null || die "nft does not run in the root"
  chroot "$root" /usr/bin/python3 -c 'import ssl, json, http.client, urllib.request' \
    || die "python3 cannot import what an HTTPS request needs"
  [ -s "$root/etc/ssl/certs/ca-certificates.crt" ] || die "the CA certificates are missing"
}

main() {
  if [ "$#" -ne 1 ]; then
    echo "usage: images/worker/root.sh OUTDIR  (needs root, mmdebstrap and getcap)" >&2
    exit 2
  fi
  local out=$1
  [ "$(id -u)" -eq 0 ] || die "must run as root (the root's files must be root's)"
  command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: run scripts/bootstrap.sh"
  command -v getcap >/dev/null || die "getcap is missing: run scripts/bootstrap.sh"
  if [ -e "$out" ] || [ -L "$out" ]; then die "$out already exists"; fi
  local parent sources
  parent=$(dirname "$out")
  [ -d "$parent" ] || die "$parent does not exist: create it first"
  sources=$(package_sources)
  [ -n "$sources" ] || die "the host's apt has no Debian $SUITE source: set TOLLGATE_IMAGE_MIRROR=URL"

  WORK=$(mktemp -d "$parent/.$(basename "$out").partial.XXXXXX")
  trap 'rm -rf --one-file-system "$WORK"' EXIT
  local root=$WORK/root line dir mirrors=()
  mkdir "$root"
  while IFS= read -r line; do mirrors+=("$line"); done <<<"$sources"
  log "building the Debian root from: $(paste -sd';' <<<"$sources")"
  mmdebstrap \
    --mode=root --format=directory --variant=essential --include="$PACKAGES" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt=force-unsafe-io --skip=essential/unlink,cleanup/apt/cache \
    "$SUITE" "$root" "${mirrors[@]}" || die "mmdebstrap failed (its messages are above)"
  write_manifest "$root"
  remove_host_files "$root"
  for dir in "${DIRS[@]}"; do mkdir -p "$root/$dir"; done
  harden "$root"
  install -d -m 0700 "$root/etc/tollgate/secrets" "$root/run/tollgate-users"
  verify "$root"
  find "$root" -xdev -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  mv -T "$root" "$out"
}

main "$@"
