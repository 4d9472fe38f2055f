#!/usr/bin/env bash
# Build and run the CPU image: with a Docker engine when one answers, else with podman and a
# locally bootstrapped debian:bookworm base (CI machines: docker client only, no registry; recipe
# in ../shared/docs/containers.md). Fails loudly when neither can work: it never skips.
#
#   bash scripts/container_ci.sh            build, then assert on `--help`, the non-root user and
#                                           `train --config tiny` with no mounted data and no network
#   bash scripts/container_ci.sh build      build only            (make docker-build)
#   bash scripts/container_ci.sh run ARGS   docker run IMAGE ARGS  (make docker-run ARGS="...")
#
#   IMAGE                   tag (default sbrjob:latest)
#   ENGINE                  docker or podman (default: docker if `docker info` works, else podman)
#   SBRJOB_CONTAINER_CACHE  podman storage + base image (default /var/tmp/sbrjob-containers), so
#                           reruns reuse the base image and the cached dependency layer
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-ci}; [ $# -gt 0 ] && shift
IMAGE=${IMAGE:-sbrjob:latest}
W=${SBRJOB_CONTAINER_CACHE:-/var/tmp/sbrjob-containers}
BASE=docker.io/library/debian:bookworm
CA=/etc/ssl/certs/ca-certificates.crt
say() { echo "[container $(date +%T)] $*" >&2; }
fail() { echo "[container] FAILED: $*" >&2; exit 1; }

setup_podman() {
  local missing=() tool
  for tool in podman runc debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  if ((${#missing[@]})); then
    [ "$(id -u)" = 0 ] || fail "need ${missing[*]} (apt-get install podman runc debootstrap), as root"
    say "installing ${missing[*]} from Debian"
    apt-get update -qq || fail "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null \
      || fail "apt-get install podman runc debootstrap"
  fi
  mkdir -p "$W"
  # crun fails here (cgroups hybrid mode); podman's default ulimits cannot be raised in the sandbox.
  printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\n' \
    > "$W/containers.conf"
  printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/storage"\nrunroot = "%s/run"\n' "$W" "$W" > "$W/storage.conf"
  export CONTAINERS_CONF=$W/containers.conf CONTAINERS_STORAGE_CONF=$W/storage.conf
}

base_image() {  # debian:bookworm under its registry name, so `FROM debian:bookworm` works unchanged
  podman image exists "$BASE" && return
  say "bootstrapping $BASE locally (no registry)"
  rm -rf "$W/rootfs"
  debootstrap --variant=minbase bookworm "$W/rootfs" > "$W/debootstrap.log" 2>&1 \
    || { tail -20 "$W/debootstrap.log" >&2; fail "debootstrap bookworm"; }
  rm -rf "$W/rootfs/var/lib/apt/lists/"*; : > "$W/rootfs/etc/resolv.conf"
  tar -C "$W/rootfs" -c --numeric-owner . | podman import --change 'CMD ["bash"]' - "$BASE" >/dev/null \
    || fail "podman import of the base image"
  rm -rf "$W/rootfs"
}

if [ -z "${ENGINE:-}" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1; then ENGINE=docker; else ENGINE=podman; fi
fi
[ "$ENGINE" = podman ] && setup_podman
engine() { "$ENGINE" "$@"; }

build() {
  local secret=()
  # TLS-intercepting proxies: the host CA bundle as a build secret (never stored in a layer).
  [ -s "$CA" ] && secret=(--secret "id=ca,src=$CA")
  if [ "$ENGINE" = podman ]; then base_image; fi
  say "building $IMAGE with $ENGINE"
  local t0=$SECONDS
  DOCKER_BUILDKIT=1 engine build "${secret[@]}" -t "$IMAGE" -f docker/Dockerfile . || fail "$ENGINE build"
  say "built $IMAGE in $((SECONDS - t0)) s"
}

case "$MODE" in
  build) build ;;
  run) engine run --rm "$IMAGE" "$@" ;;
  ci)
    build
    out=$(engine run --rm --network none "$IMAGE" --help) || fail "$ENGINE run $IMAGE --help"
    grep -q "Usage: sbrjob" <<<"$out" && grep -q " train " <<<"$out" || fail "--help lacks usage or train: $out"
    say "--help ok"
    uid=$(engine run --rm --network none --entrypoint id "$IMAGE" -u) || fail "$ENGINE run id -u"
    [ "$uid" != 0 ] || fail "the image runs as root"
    t0=$SECONDS
    out=$(engine run --rm --network none "$IMAGE" train --config tiny) || fail "$ENGINE run $IMAGE train --config tiny"
    say "train --config tiny ran in $((SECONDS - t0)) s"
    python3 - "$out" <<'PY' || fail "train output: $out"
import json, sys
text = sys.argv[1]
res = json.loads(text[text.index("{"):])  # train prints its result as JSON; progress lines come before
r20 = res["test"]["recall@20"]
assert 0.0 <= r20 <= 1.0 and res["test"]["events"] > 0, res
print(f"[container] train ok: best_epoch={res['best_epoch']} test recall@20={r20:.4f}", file=sys.stderr)
PY
    say "OK" ;;
  *) fail "unknown mode $MODE: use ci, build or run ARGS" ;;
esac
