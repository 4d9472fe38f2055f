"""`export`: every split to shards, exact coverage, determinism, staleness, no trusted partial output."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sbrjob import config, export, runs, shards, stages
from sbrjob.errors import SbrjobError
from sbrjob.runs import Prepared, Run

from conftest import load_split

N_ITEMS = 40


def make_config(tmp_path, *overrides):
    return config.config_from_dict({
        "output_dir": str(tmp_path / "run"),
        "export": {"batch_size": 4, "block_steps": 3, "shards": 2, "eval_batch_size": 3, "eval_shards": 1},
    }, list(overrides))


def write_prepared(cfg, seed=0):
    """A prepared data dir in the prepare contract, written by hand (no raw data, no prepare run)."""
    rng = np.random.default_rng(seed)
    data_dir = Path(cfg.data_dir)
    data_dir.mkdir(parents=True)
    frames = {}
    for split, n_sessions in (("train", 30), ("valid", 5), ("test", 6)):
        lengths = rng.integers(2, 9, n_sessions)
        frame = pd.DataFrame({"session": np.repeat(np.arange(n_sessions), lengths).astype(np.int64),
                              "item": rng.integers(0, N_ITEMS, lengths.sum()).astype(np.int32),
                              "time": np.arange(lengths.sum(), dtype=np.float64)})
        frame.to_parquet(data_dir / f"{split}.parquet", index=False)
        frames[split] = frame
    seal(cfg)
    return frames


def seal(cfg, **extra):
    """(Re)write the data manifest for the Parquet files as they are now."""
    data_dir = Path(cfg.data_dir)
    files = {f"{s}.parquet": runs._sha256_file(str(data_dir / f"{s}.parquet")) for s in runs.SPLITS}
    splits = {s: {"events": 0, "sessions": 0} for s in runs.SPLITS}
    manifest = runs.data_manifest(cfg, [], files, N_ITEMS, splits)
    manifest = shards.sealed({**manifest, **extra})
    (data_dir / "manifest.json").write_text(json.dumps(manifest))


def run_export(cfg, force=False):
    """What `sbrjob export` does once the data is prepared: export the missing or stale splits."""
    return stages.ensure_exported(Run(cfg.output_dir), cfg, Prepared.open(cfg.data_dir), force=force)


def split_pairs(frame):
    s, i = frame["session"].to_numpy(), frame["item"].to_numpy()
    same = s[1:] == s[:-1]
    return Counter(zip(i[:-1][same].tolist(), i[1:][same].tolist()))


def shard_pairs(split_dir):
    got = Counter()
    for block in shards.block_dataset(split_dir):
        real = block["weight"].numpy() == 1
        got.update(zip(block["input"].numpy()[real].tolist(), block["target"].numpy()[real].tolist()))
    return got


def shard_bytes(cfg):
    root = Path(cfg.shards_dir)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_split_exported_with_exact_coverage(tmp_path, shuffle):
    cfg = make_config(tmp_path, f"export.shuffle_sessions={str(shuffle).lower()}")
    frames = write_prepared(cfg)
    manifests = run_export(cfg)
    assert set(manifests) == {"train", "valid", "test"}
    for split, frame in frames.items():
        m = manifests[split]
        split_dir = config.join(cfg.shards_dir, split)
        assert shards.read_manifest(split_dir) == m
        assert (m["lanes"], m["shards"]) == ((4, 2) if split == "train" else (3, 1))
        assert m["n_items"] == N_ITEMS and m["data_digest"] == Prepared.open(cfg.data_dir).digest
        assert m["events"] == len(frame) and m["sessions"] == frame["session"].nunique()
        assert shard_pairs(split_dir) == split_pairs(frame)
        assert m["pairs"] == sum(split_pairs(frame).values())
        assert m["padding"] == pytest.approx(1 - m["pairs"] / (m["lanes"] * m["steps"]), abs=1e-6)


def test_eval_splits_enter_longest_first_and_pad_less(tmp_path):
    cfg = make_config(tmp_path)
    write_prepared(cfg)
    manifests = run_export(cfg)
    assert [manifests[s]["order"] for s in ("train", "valid", "test")] == ["oldest-first", "longest-first",
                                                                           "longest-first"]
    # a few long sessions and many short ones: oldest first leaves one lane playing the long tail
    lengths = np.array([2] * 40 + [30, 29, 28])
    session = np.repeat(np.arange(len(lengths)), lengths)
    item = np.zeros(len(session), np.int32)
    name, order = export.session_order(cfg, "test", session)
    longest = export.write_split(session, item, tmp_path / "longest", split="test", lanes=4, n_shards=1,
                                 block_steps=1, order=order)
    oldest = export.write_split(session, item, tmp_path / "oldest", split="test", lanes=4, n_shards=1,
                                block_steps=1)
    assert name == "longest-first" and longest["pairs"] == oldest["pairs"]
    assert longest["steps"] < oldest["steps"] and longest["padding"] < oldest["padding"]


def test_same_config_gives_byte_identical_shards(tmp_path):
    outputs = []
    for run in ("a", "b"):
        cfg = make_config(tmp_path / run)
        write_prepared(cfg)
        run_export(cfg)
        outputs.append(shard_bytes(cfg))
    a, b = outputs
    a = {k: v for k, v in a.items() if not k.endswith("config.yaml")}  # holds the differing output_dir
    assert a and a == {k: v for k, v in b.items() if k in a}


def test_shuffle_is_seeded(tmp_path):
    def train_shard(run, seed):
        cfg = make_config(tmp_path / run, "export.shuffle_sessions=true", f"seed={seed}")
        write_prepared(cfg)
        run_export(cfg)
        return (Path(cfg.shards_dir) / "train" / shards.shard_name(0, 2)).read_bytes()

    assert train_shard("a", 1) == train_shard("b", 1)
    assert train_shard("c", 1) != train_shard("d", 2)


def test_current_shards_are_kept_stale_ones_rewritten(tmp_path):
    cfg = make_config(tmp_path)
    write_prepared(cfg)
    run_export(cfg)
    shard = Path(cfg.shards_dir) / "train" / shards.shard_name(0, 2)
    first = shard.stat().st_ino
    run_export(cfg)
    assert shard.stat().st_ino == first  # current: not rewritten
    run_export(cfg, force=True)
    assert shard.stat().st_ino != first
    # other export settings: a new layout
    cfg2 = make_config(tmp_path, "export.block_steps=5")
    assert run_export(cfg2)["train"]["block_steps"] == 5
    # a deleted shard makes the split stale again
    (Path(cfg.shards_dir) / "valid" / shards.shard_name(0, 1)).unlink()
    assert not runs.shards_are_current(config.join(cfg.shards_dir, "valid"), Prepared.open(cfg.data_dir), cfg2)
    run_export(cfg2)
    shards.block_dataset(config.join(cfg.shards_dir, "valid"))  # whole and verified again
    # prepare re-run on other raw data under the same config: its manifest changes -> re-export
    before = shard.stat().st_ino
    assert run_export(cfg2)["train"] and shard.stat().st_ino == before
    seal(cfg2, splits={"train": {"events": 1}})
    run_export(cfg2)
    assert shard.stat().st_ino != before


def test_killed_export_leaves_nothing_trusted(tmp_path, monkeypatch):
    cfg = make_config(tmp_path)
    write_prepared(cfg)
    real_write = shards.write_shard
    calls = []

    def dies_on_second_shard(path, records):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the job were killed mid-export
        return real_write(path, records)

    monkeypatch.setattr(shards, "write_shard", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        run_export(cfg)
    assert not Path(cfg.shards_dir, "train").exists()
    assert list(Path(cfg.shards_dir).iterdir()) == []  # no staging left behind either
    with pytest.raises(SbrjobError, match="no manifest"):
        shards.read_manifest(config.join(cfg.shards_dir, "train"))


def test_missing_prepared_manifest_is_an_error(tmp_path):
    cfg = make_config(tmp_path)
    with pytest.raises(SbrjobError, match="no prepared data .*run `sbrjob prepare`"):
        Prepared.open(cfg.data_dir)


def test_edited_or_corrupted_prepared_file_is_refused(tmp_path):
    cfg = make_config(tmp_path)
    frames = write_prepared(cfg)
    frames["train"].loc[0, "item"] = 1 + int(frames["train"].loc[0, "item"])
    frames["train"].to_parquet(Path(cfg.data_dir) / "train.parquet", index=False)  # one value changed
    with pytest.raises(SbrjobError, match="train.parquet: content does not match its sha256"):
        run_export(cfg)
    (Path(cfg.data_dir) / "train.parquet").unlink()
    with pytest.raises(SbrjobError, match="train.parquet: missing although .*manifest.json lists it"):
        run_export(cfg)
    assert not Path(cfg.shards_dir, "train").exists()


def test_item_outside_the_vocabulary_is_refused(tmp_path):
    cfg = make_config(tmp_path)
    frames = write_prepared(cfg)
    frames["test"].loc[3, "item"] = N_ITEMS
    frames["test"].to_parquet(Path(cfg.data_dir) / "test.parquet", index=False)
    seal(cfg)  # checksums that match: a prepare bug, not a corrupted file
    with pytest.raises(SbrjobError, match=f"test.parquet: item index {N_ITEMS} outside the vocabulary"):
        run_export(cfg)
    assert not Path(cfg.shards_dir, "test").exists()


def test_cli_export_then_ensure_exported_from_raw_sample_data(tmp_path):
    from typer.testing import CliRunner

    from sbrjob.cli import app

    out_dir = tmp_path / "tiny"
    result = CliRunner().invoke(app, ["export", "--config", "tiny", "--set", f"output_dir={out_dir}"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    cfg = config.load_config("tiny", [f"output_dir={out_dir}"])
    shard = Path(cfg.shards_dir) / "train" / shards.shard_name(0, cfg.export.shards)
    written = shard.stat().st_ino
    manifests = run_export(cfg)  # current: reused, not rewritten
    assert shard.stat().st_ino == written
    for split in ("train", "valid", "test"):
        assert summary[split] == {k: manifests[split][k] for k in summary[split]}
        frame = load_split(cfg.data_dir, split)
        assert shard_pairs(config.join(cfg.shards_dir, split)) == split_pairs(frame)
    e = cfg.export
    assert (manifests["train"]["lanes"], manifests["train"]["block_steps"]) == (e.batch_size, e.block_steps)
    assert manifests["train"]["padding"] < 0.1


def test_non_chief_worker_waits_for_the_chiefs_shards_and_never_writes(tmp_path):
    cfg = config.load_config("tiny", [f"output_dir={tmp_path / 'run'}"])
    run = Run(cfg.output_dir)
    with pytest.raises(SbrjobError, match="chief worker did not publish"):
        stages.wait_for_export(run, cfg, timeout_s=0.2, poll_s=0.05)
    assert not (tmp_path / "run").exists()  # waiting wrote nothing
    manifests = stages.export_stage(cfg)  # what the chief does
    assert stages.wait_for_export(run, cfg, timeout_s=1)[1] == manifests
    stale = config.load_config("tiny", [f"output_dir={tmp_path / 'run'}", "export.block_steps=4"])
    with pytest.raises(SbrjobError, match="chief worker"):
        stages.wait_for_export(run, stale, timeout_s=0.2, poll_s=0.05)
