#!/usr/bin/env bash
# Build and run the CPU image: with a Docker engine when one answers, else with podman and a
# locally bootstrapped debian:bookworm base (CI machines: docker client only, no registry; recipe
# in ../shared/docs/containers.md). Fails loudly when neither can work: it never skips.
#
#   bash scripts/container_ci.sh            build, then assert on `--help`, the non-root user,
#                                           `train --config tiny` with no mounted data and no network,
#                                           `prepare` from read-only mounted data, and `prepare` to
#                                           gs:// (a GCS emulator on the host, from .venv)
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
  # podman's cache keeps superseded images (each ~1.5 GB once pyproject.toml changed): drop them
  if [ "$ENGINE" = podman ]; then podman image prune -f >/dev/null || say "warning: image prune failed"; fi
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
    # the evaluation kernel compiled at build time loads from numba's cache as the runtime user
    hits=$(engine run --rm --network none --entrypoint python "$IMAGE" -c \
      "from sbrjob import kernels; kernels.warm_up(); print(sum(kernels._rank_top_rows.stats.cache_hits.values()))") \
      || fail "$ENGINE run kernels.warm_up"
    [ "$hits" = 1 ] || fail "the numba kernel was recompiled at run time (cache hits: $hits)"
    say "numba kernel loaded from the build-time cache"
    t0=$SECONDS
    out=$(engine run --rm --network none "$IMAGE" train --config tiny --json) || fail "$ENGINE run $IMAGE train --config tiny"
    say "train --config tiny ran in $((SECONDS - t0)) s"
    python3 - "$out" <<'PY' || fail "train output: $out"
import json, sys
text = sys.argv[1]
res = json.loads(text[text.index("{"):])  # train prints its result as JSON; progress lines come before
r20 = res["test"]["recall@20"]
assert 0.0 <= r20 <= 1.0 and res["test"]["events"] > 0, res
print(f"[container] train ok: best_epoch={res['best_epoch']} test recall@20={r20:.4f}", file=sys.stderr)
PY
    # data mounted read-only: MovieLens-format files (the embedded sample) under /data
    out=$(engine run --rm --network none -v "$PWD/sbrjob/sample:/data:ro" "$IMAGE" prepare --config movielens \
          --set data.path=/data/ratings.dat.gz --set data.items_path=/data/movies.dat --set output_dir=/tmp/run) \
      || fail "$ENGINE run prepare with data mounted"
    grep -q '"train"' <<<"$out" || fail "prepare with mounted data printed no split sizes: $out"
    say "prepare with mounted data ok"
    # outputs on gs://: a GCS emulator on the host (the test venv's gcp-storage-emulator)
    [ -x .venv/bin/python ] || fail ".venv missing: run make install first (the gs:// check needs the emulator)"
    port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    .venv/bin/python -m gcp_storage_emulator start --host 127.0.0.1 --port "$port" --in-memory \
      --default-bucket sbrjob-ci --quiet > /dev/null 2>&1 &
    emu=$!
    trap 'kill "$emu" 2>/dev/null || true' EXIT
    .venv/bin/python - "$port" <<'PY' || fail "GCS emulator did not start on port $port"
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit(1)
PY
    engine run --rm --network host -e "STORAGE_EMULATOR_HOST=http://127.0.0.1:$port" "$IMAGE" \
      prepare --config tiny --set output_dir=gs://sbrjob-ci/run > /dev/null || fail "$ENGINE run prepare to gs://"
    files=$(STORAGE_EMULATOR_HOST="http://127.0.0.1:$port" .venv/bin/python -c \
      'from sbrjob import storage; print(" ".join(storage.list_files("gs://sbrjob-ci/run/data")))')
    grep -q "manifest.json" <<<"$files" && grep -q "train.parquet" <<<"$files" || fail "gs://sbrjob-ci/run/data holds: $files"
    kill "$emu" 2>/dev/null || true
    say "prepare to gs:// ok"
    say "OK" ;;
  *) fail "unknown mode $MODE: use ci, build or run ARGS" ;;
esac
