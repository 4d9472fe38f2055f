#!/usr/bin/env bash
# CLI smoke test on the embedded tiny CPU sample: prepare -> export -> train (one epoch) ->
# evaluate -> recommend, with configs/tiny.yaml into a temporary output_dir, asserting on outputs.
# Usage: bash scripts/smoke.sh   (uses .venv/bin/sbrjob when present, else sbrjob on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$([ -x .venv/bin/sbrjob ] && echo .venv/bin/ || echo "")
PY=${BIN:+${BIN}python}; PY=${PY:-python3}
SBRJOB=${BIN}sbrjob
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
RUN=$TMP/run
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
JOB=(--config tiny --set "output_dir=$RUN" --set train.epochs=1)
step() { echo "[smoke $(date +%T)] $*"; }
fail() { echo "[smoke] FAILED: $*" >&2; exit 1; }
need() { for f in "$@"; do [ -s "$RUN/$f" ] || fail "missing $RUN/$f"; done; }
t0=$SECONDS

step "prepare"
$SBRJOB prepare "${JOB[@]}" > "$TMP/prepare.out"
need data/manifest.json data/train.parquet data/valid.parquet data/test.parquet data/items.parquet data/stats.json

step "export"
$SBRJOB export "${JOB[@]}" > "$TMP/export.out"
for split in train valid test; do
  need "shards/$split/manifest.json"
  ls "$RUN/shards/$split/"*.tfrecord >/dev/null 2>&1 || fail "no TFRecord shards in $RUN/shards/$split"
done

step "train (1 epoch)"
$SBRJOB train "${JOB[@]}" --json > "$TMP/train.out"
need metrics.json config.yaml
ls "$RUN"/checkpoints/*/checkpoint >/dev/null 2>&1 || fail "no checkpoint under $RUN/checkpoints"

step "evaluate"
$SBRJOB evaluate "${JOB[@]}" > "$TMP/evaluate.out"
need eval_test.json

step "recommend"
ITEMS=$($PY - "$RUN" <<'PY'
import sys, pandas as pd
items = pd.read_parquet(f"{sys.argv[1]}/data/items.parquet").sort_values("support", ascending=False)
print(",".join(items["item_id"].astype(str).head(3)))
PY
)
$SBRJOB recommend --run "$RUN" --items "$ITEMS" -k 5 --json > "$TMP/recommend.json"
$SBRJOB recommend --run "$RUN" --items "$ITEMS" -k 5 > "$TMP/recommend.txt"

$PY - "$RUN" "$TMP" <<'PY'
import json, sys
run, tmp = sys.argv[1], sys.argv[2]
def last_json(path):  # the command's JSON result (logs may come before it)
    text = open(path).read()
    return json.loads(text[text.index("{"):])
metrics = json.load(open(f"{run}/metrics.json"))
test = metrics["test"]
for key in ("recall@20", "mrr@20"):
    assert 0.0 <= test[key] <= 1.0, (key, test)
assert test["events"] > 0, test
assert last_json(f"{tmp}/train.out")["test"]["recall@20"] == test["recall@20"]
ev = json.load(open(f"{run}/eval_test.json"))
assert 0.0 <= ev["recall@20"] <= 1.0 and ev["events"] == test["events"], (ev, test)
rec = json.load(open(f"{tmp}/recommend.json"))["recommendations"]
assert len(rec) == 5 and [r["rank"] for r in rec] == [1, 2, 3, 4, 5], rec
scores = [r["score"] for r in rec]
assert scores == sorted(scores, reverse=True), scores
table = open(f"{tmp}/recommend.txt").read()
assert all(r["item_id"] in table for r in rec), table
print(f"[smoke] ok: test recall@20={test['recall@20']:.4f} mrr@20={test['mrr@20']:.4f} "
      f"on {test['events']} events; recommend printed {len(rec)} rows")
PY
step "done in $((SECONDS - t0)) s"
