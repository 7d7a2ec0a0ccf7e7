#!/usr/bin/env bash
# Builds the OCI image of tollgate's node service (`tollgate serve`) from Debian packages.
#
#   images/worker/build.sh TAG [BINARY]
#
# TAG names the image in the local podman store, e.g. localhost/tollgate-worker:0.1.0 (no
# container registry is involved: push it or `podman save` it yourself). BINARY is the
# tollgate to ship, by default target/dist/tollgate of this checkout (`cargo build --profile
# dist -p tollgate`); a binary built with the test-only layer switches is refused.
#
# Two layers, so that a node upgrading tollgate downloads only the second:
#   1. the Debian root of root.sh, kept in the store as
#      localhost/tollgate-worker-base:<hash of root.sh and TOLLGATE_IMAGE_EXTRA_PACKAGES>
#      and reused while they are unchanged (remove that tag to take Debian's point releases
#      and security updates);
#   2. the binary at /usr/local/bin/tollgate, the entry point; the default command is
#      `serve` (`podman run IMAGE doctor` runs doctor instead).
# Both are made by `podman build --timestamp`, with no network and no RUN step: the same
# root tree and the same binary give the same image id.
set -euo pipefail

: "${SOURCE_DATE_EPOCH:=1700000000}"
export SOURCE_DATE_EPOCH
# Only a binary with the test-only layer switches (--features test-layer-switches) reads it.
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

# The base's tag: the first 16 hex digits of a SHA-256 over root.sh and the extra packages.
base_hash() {
  { cat "$HERE/root.sh"; printf '\0%s' "${TOLLGATE_IMAGE_EXTRA_PACKAGES:-}"; } | sha256sum | cut -c1-16
}

# `podman build` of the Containerfile in directory $2 as image $1, offline.
podman_build() {
  podman build --quiet --pull=never --network=none --layers=false \
    --timestamp "$SOURCE_DATE_EPOCH" --tag "$1" --file "$2/Containerfile" "$2" >/dev/null
}

# Builds the base image $1 from root.sh's tree, in the empty directory $2.
build_base() {
  local tag=$1 work=$2
  bash "$HERE/root.sh" "$work/root"
  # One layer from the tree: stable order, numeric owners, no other filesystem, and GNU
  # tar's own format (the POSIX one --xattrs needs records access and change times). The
  # tree has no extended attribute worth keeping: root.sh strips file capabilities.
  tar --sort=name --numeric-owner --one-file-system -C "$work/root" -cf "$work/root.tar" .
  rm -rf --one-file-system "$work/root"
  printf 'FROM scratch\nADD root.tar /\n' > "$work/Containerfile"
  podman_build "$tag" "$work" || die "podman build of $tag failed"
  rm -f "$work/root.tar"
}

# Builds image $1 on base $2 with binary $3, in the empty directory $4.
build_service() {
  local tag=$1 base=$2 binary=$3 work=$4 version
  version=$("$binary" --version | awk 'NR == 1 {print $2}')
  install -m 0755 "$binary" "$work/tollgate"
  cat > "$work/Containerfile" <<EOF
FROM $base
COPY tollgate /usr/local/bin/tollgate
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
LABEL org.opencontainers.image.title="tollgate node service" \\
      org.opencontainers.image.description="tollgate serve: sandbox launches for unprivileged callers on /run/tollgate/tollgate.sock" \\
      org.opencontainers.image.version="$version" \\
      org.opencontainers.image.licenses="Apache-2.0" \\
      io.tollgate.base="$base"
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve"]
EOF
  podman_build "$tag" "$work" || die "podman build of $tag failed"
}

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
  [ -f "$binary" ] && [ -x "$binary" ] \
    || die "$binary is not an executable file: build it with cargo build --profile dist -p tollgate, or name one"
  if grep -q --fixed-strings "$TEST_SWITCH" "$binary"; then
    die "$binary was built with the test-only layer switches ($TEST_SWITCH): ship one built without --features test-layer-switches"
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
