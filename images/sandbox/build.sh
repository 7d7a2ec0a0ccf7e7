#!/usr/bin/env bash
# Builds a root filesystem for `tollgate run --rootfs DIR` from Debian 12 (bookworm) packages.
#
#   images/sandbox/build.sh VARIANT OUTDIR
#
# VARIANT is `python` (Python 3 with its standard library and the CA certificates: enough for
# an HTTPS request through tollgate's proxy) or `minimal` (coreutils and dash, with their hard
# dependencies, and nothing else). OUTDIR must not exist; it appears, complete, only when the
# build succeeded (the root is built beside it and renamed into place), so a path that exists
# is always a whole image.
#
# Packages come from the Debian mirror this machine's apt uses (asked of apt itself, so
# sources.list and deb822 .sources files count alike); no container registry is involved.
# TOLLGATE_IMAGE_MIRROR (and TOLLGATE_IMAGE_SECURITY_MIRROR) name another one, for a host
# whose apt has no bookworm source.
#
# What comes out is made fit to be bound read-only as `/` under untrusted code: every file is
# root's and writable by nobody else, no file is setuid or setgid or has file capabilities
# (the sandbox runs with no_new_privs, so they would not take effect anyway: this is the
# second belt), no device node is left, the mount points tollgate mounts on exist, and none of
# the build host's own files (resolv.conf, hostname) are inside. /etc/tollgate-image records
# the variant, this script's hash and every package with its version.
set -euo pipefail

SUITE=bookworm
# Fixed timestamps for the files mmdebstrap creates: two builds from the same mirror state
# give the same tree (mmdebstrap's reproducibility contract).
: "${SOURCE_DATE_EPOCH:=1700000000}"
export SOURCE_DATE_EPOCH

# Directories tollgate mounts on (a read-only root cannot grow new mount points).
MOUNT_POINTS=(tmp var/tmp run dev dev/shm dev/pts proc sys etc/ssl/certs)
# Documentation nobody reads inside a sandbox: about a fifth of a minimal root.
PRUNED=(usr/share/man usr/share/info usr/share/locale usr/share/lintian usr/share/linda)

log() { printf 'build.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

usage() {
  cat >&2 <<'EOF'
usage: images/sandbox/build.sh VARIANT OUTDIR
  VARIANT  python   Debian 12 essential set + python3-minimal, libpython3.11-stdlib, ca-certificates
           minimal  coreutils and dash (and their hard dependencies), unpacked, nothing else
  OUTDIR   where the root filesystem goes; must not exist yet
Needs root and mmdebstrap (scripts/bootstrap.sh installs it).
EOF
}

# --- the variants --------------------------------------------------------------------------

# Sets MM_VARIANT (mmdebstrap's package set) and PACKAGES (added to it) for variant $1.
choose_variant() {
  case "$1" in
    python)
      # The smallest installable Debian (Essential: yes, no apt) with packages configured by
      # their maintainer scripts: ca-certificates builds /etc/ssl/certs, Python byte-compiles.
      MM_VARIANT=essential
      PACKAGES=python3-minimal,libpython3.11-stdlib,ca-certificates
      ;;
    minimal)
      # Unpacked, not configured: no package manager is needed to run a shell and coreutils.
      MM_VARIANT=extract
      PACKAGES=coreutils,dash
      ;;
    *)
      usage
      die "unknown variant '$1': choose python or minimal"
      ;;
  esac
}

# --- where the packages come from ----------------------------------------------------------

# Prints one `deb URI SUITE main` line per bookworm suite the host's apt knows (bookworm,
# bookworm-updates, bookworm-security), or the TOLLGATE_IMAGE_MIRROR ones.
package_sources() {
  if [ -n "${TOLLGATE_IMAGE_MIRROR:-}" ]; then
    printf 'deb %s %s main\n' "$TOLLGATE_IMAGE_MIRROR" "$SUITE"
    printf 'deb %s %s main\n' "$TOLLGATE_IMAGE_MIRROR" "$SUITE-updates"
    if [ -n "${TOLLGATE_IMAGE_SECURITY_MIRROR:-}" ]; then
      printf 'deb %s %s main\n' "$TOLLGATE_IMAGE_SECURITY_MIRROR" "$SUITE-security"
    fi
    return
  fi
  # apt parses every sources file itself; --no-release-info needs no downloaded index.
  # shellcheck disable=SC2016 # $(...) are apt's format fields, not the shell's
  apt-get indextargets --no-release-info \
      --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Created-By: Packages' \
    | awk -v suite="$SUITE" '
        $3 == "main" && ($2 == suite || $2 == suite "-updates" || $2 == suite "-security") \
          && !seen[$1 " " $2]++ { print "deb " $1 " " $2 " main" }'
}

# --- making the tree fit for a sandbox -----------------------------------------------------

# Removes what belongs to the build host or to a booted system, not to an image.
remove_host_files() {
  local root=$1
  rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
  rm -rf "${root:?}/dev" "$root/var/cache/apt" "$root/var/lib/apt/lists"
  find "$root/var/log" -xdev -type f -delete 2>/dev/null || true
  for dir in "${PRUNED[@]}"; do rm -rf "${root:?}/$dir"; done
  # The merged-/usr links of the multilib directories, when nothing is in them.
  for dir in lib32 libx32; do
    if [ -L "$root/$dir" ] && [ -d "$root/usr/$dir" ] && [ -z "$(ls -A "$root/usr/$dir")" ]; then
      rm "$root/$dir"
      rmdir "$root/usr/$dir"
    fi
  done
  # Keep each package's copyright file, drop the rest of /usr/share/doc.
  if [ -d "$root/usr/share/doc" ]; then
    find "$root/usr/share/doc" -xdev ! -type d ! -name copyright -delete
  fi
}

# Creates the directories tollgate mounts on.
make_mount_points() {
  local root=$1
  for dir in "${MOUNT_POINTS[@]}"; do mkdir -p "$root/$dir"; done
}

# Strips every privilege a file could carry and every write bit but the owner's.
harden() {
  local root=$1 file
  find "$root" -xdev \( -type b -o -type c -o -type p -o -type s \) -delete
  find "$root" -xdev -type f -perm /6000 -printf 'build.sh: stripping setuid/setgid: /%P\n' \
    -exec chmod ug-s {} + >&2
  getcap -r "$root" 2>/dev/null | while read -r file _; do
    log "stripping file capabilities: ${file#"$root"}"
    setcap -r "$file"
  done
  chown -R --no-dereference root:root "$root"
  find "$root" -xdev ! -type l -perm /022 -exec chmod go-w {} +
  chmod 0755 "$root"
}

# Clamps every timestamp to SOURCE_DATE_EPOCH, so the tree does not record when it was built.
clamp_timestamps() {
  local root=$1
  find "$root" -xdev -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}

# Fails unless the tree holds what tollgate and the variant promise.
verify() {
  local root=$1 variant=$2 found dir
  found=$(find "$root" -xdev \( -perm /6000 -type f -o ! -type l -perm /022 \
            -o ! -user root -o ! -group root -o -type b -o -type c \) -printf '/%P\n')
  [ -z "$found" ] || die "the image still has privileged, foreign or writable files: $(head -5 <<<"$found")"
  [ -z "$(getcap -r "$root" 2>/dev/null)" ] || die "the image still has file capabilities"
  for dir in "${MOUNT_POINTS[@]}"; do
    if [ ! -d "$root/$dir" ] || [ -L "$root/$dir" ]; then die "mount point /$dir is missing"; fi
  done
  chroot "$root" /bin/sh -c 'ls / >/dev/null' || die "/bin/sh does not run in the image"
  case "$variant" in
    python)
      chroot "$root" /usr/bin/python3 -c 'import ssl, json, http.client, urllib.request' \
        || die "python3 cannot import what an HTTPS request needs"
      [ -s "$root/etc/ssl/certs/ca-certificates.crt" ] || die "the CA certificates are missing"
      ;;
    minimal)
      [ ! -e "$root/usr/bin/python3" ] || die "python3 found in the minimal image"
      ;;
  esac
}

# Writes /etc/tollgate-image from the names of the package files mmdebstrap downloaded.
write_manifest() {
  local root=$1 variant=$2
  {
    echo "# A tollgate sandbox root, built by images/sandbox/build.sh: bind it with --rootfs."
    echo "variant $variant"
    echo "suite $SUITE"
    echo "script-sha256 $(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)"
    # name_version_arch.deb, with ':' of an epoch spelled %3a.
    find "$root/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -printf '%f\n' \
      | sed -n 's/%3a/:/g; s/^\([^_]*\)_\([^_]*\)_[^_]*\.deb$/package \1 \2/p' | sort
  } > "$root/etc/tollgate-image"
  chmod 0644 "$root/etc/tollgate-image"
}

# --- main ----------------------------------------------------------------------------------

main() {
  case "${1:-}" in -h | --help) usage; exit 0 ;; esac
  if [ "$#" -ne 2 ]; then
    usage
    exit 2
  fi
  local variant=$1 out=$2
  choose_variant "$variant"
  [ "$(id -u)" -eq 0 ] || die "must run as root (the image's files must be root's)"
  command -v mmdebstrap >/dev/null || die "mmdebstrap is missing: run scripts/bootstrap.sh"
  command -v getcap >/dev/null || die "getcap is missing: run scripts/bootstrap.sh"
  if [ -e "$out" ] || [ -L "$out" ]; then
    die "$out already exists: remove it or choose another OUTDIR"
  fi
  local parent
  parent=$(dirname "$out")
  [ -d "$parent" ] || die "$parent does not exist: create it first"

  local sources
  sources=$(package_sources)
  [ -n "$sources" ] || die "the host's apt has no Debian $SUITE source: set TOLLGATE_IMAGE_MIRROR=URL"

  # Built beside OUTDIR (same filesystem, so the final rename is atomic), removed on failure.
  # --one-file-system: never follow a mount mmdebstrap might have left inside.
  WORK=$(mktemp -d "$parent/.$(basename "$out").partial.XXXXXX")
  trap 'rm -rf --one-file-system "$WORK"' EXIT
  local root=$WORK/root
  mkdir "$root"

  log "building the $variant image from: $(echo "$sources" | paste -sd';')"
  local start=$SECONDS
  local mirrors=()
  while IFS= read -r line; do mirrors+=("$line"); done <<<"$sources"
  # force-unsafe-io: no fsync per file; a failed build is thrown away whole anyway.
  # The downloaded packages are kept (essential/unlink, cleanup/apt/cache) for the manifest;
  # remove_host_files deletes them.
  mmdebstrap \
    --mode=root --format=directory --variant="$MM_VARIANT" --include="$PACKAGES" \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt=force-unsafe-io --skip=essential/unlink,cleanup/apt/cache \
    "$SUITE" "$root" "${mirrors[@]}" || die "mmdebstrap failed (its messages are above)"

  write_manifest "$root" "$variant"
  remove_host_files "$root"
  make_mount_points "$root"
  harden "$root"
  verify "$root" "$variant"
  clamp_timestamps "$root"
  mv -T "$root" "$out"
  log "built $out: $(du -sxh "$out" | cut -f1), $((SECONDS - start)) s"
}

main "$@"
