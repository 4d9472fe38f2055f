"""Config loading: types, ranges, did-you-mean, overrides, packaged names, round trip."""

import pytest
import yaml

from sbrjob.config import dump_config, load_config, packaged_configs, parse_config
from sbrjob.errors import SbrjobError


def test_packaged_configs_load_and_validate():
    names = packaged_configs()
    assert {"tiny.yaml", "movielens.yaml", "yoochoose.yaml"} <= set(names)
    for name in names:
        cfg = load_config(name[:-5])
        assert cfg.name == name[:-5]


def test_override_changes_value_and_type_is_checked():
    cfg = load_config("tiny", ["train.lr=0.05", "model.layers=[64, 32]", "sessions.gap=3600"])
    assert cfg.train.lr == 0.05 and cfg.model.layers == [64, 32] and cfg.sessions.gap == 3600.0
    with pytest.raises(SbrjobError, match=r"train\.epochs: expected an integer"):
        load_config("tiny", ["train.epochs=two"])
    # YAML 1.1 reads exponents without a dot as text; a float key takes them as numbers
    assert load_config("tiny", ["train.lr=1e-4"]).train.lr == 1e-4
    assert load_config("tiny", ["train.lr=2.5E+1"]).train.lr == 25.0
    with pytest.raises(SbrjobError, match=r"train\.lr: expected a number, got '1e'"):
        load_config("tiny", ["train.lr=1e"])


def test_unknown_key_names_file_and_suggests(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n  lrr: 0.2\n")
    with pytest.raises(SbrjobError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert str(path) in msg and "train.learning_rate: unknown key" in msg


def test_typo_gets_did_you_mean(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("modle:\n  layers: [10]\n")
    with pytest.raises(SbrjobError, match="did you mean 'model'"):
        load_config(str(path))


@pytest.mark.parametrize("assignment, key", [
    ("train.lr=0", "train.lr"),
    ("model.dropout_hidden=1.0", "model.dropout_hidden"),
    ("export.shards=3", "export.shards"),
    ("filter.min_session_length=1", "filter.min_session_length"),
    ("eval.metric=mrr@50", "eval.metric"),
    ("train.strategy=gpu", "train.strategy"),
    ("split.test_fraction=0.95", "split.valid_fraction"),
])
def test_bad_values_name_the_key(assignment, key):
    with pytest.raises(SbrjobError, match=key.replace(".", r"\.")):
        load_config("tiny", [assignment])


def test_bad_yaml_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [0.1\n")
    with pytest.raises(SbrjobError, match=r"bad\.yaml line \d+: not valid YAML"):
        load_config(str(path))


def test_missing_config_lists_packaged():
    with pytest.raises(SbrjobError, match="packaged configs"):
        load_config("no-such-config")


def test_dump_round_trips():
    cfg = load_config("movielens", ["train.lr=0.3"])
    again = parse_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg
    assert again.section_fingerprint("data") == cfg.section_fingerprint("data")
    assert again.section_fingerprint("train") != load_config("movielens").section_fingerprint("train")


def test_override_syntax_error():
    with pytest.raises(SbrjobError, match="KEY=VALUE"):
        load_config("tiny", ["train.lr"])


# ---------------------------------------------------------------- refused: duplicates, bad bytes, ignored keys


@pytest.mark.parametrize("text, key, first, again", [
    ("train:\n  lr: 0.1\nmodel:\n  layers: [8]\ntrain:\n  epochs: 1\n", "train", 1, 5),  # a section twice
    ("train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n", "lr", 2, 4),  # a key twice in a section
    ("data:\n  columns:\n    item: a\n    item: b\n", "item", 3, 4),  # deeper
])
def test_duplicate_keys_are_refused_at_every_level_naming_both_lines(tmp_path, text, key, first, again):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(SbrjobError) as err:
        load_config(str(path))
    assert str(err.value) == (f"{path}: duplicate key {key!r} (first at line {first}, again at line {again}); "
                              "keep one of them")


def test_yaml_merge_keys_still_override():
    from sbrjob.config import parse_yaml

    assert parse_yaml("base: &b {lr: 0.1, epochs: 2}\ntrain:\n  <<: *b\n  lr: 0.5\n", "x")["train"] == \
        {"lr": 0.5, "epochs": 2}


def test_invalid_set_values_and_keys_are_one_line():
    with pytest.raises(SbrjobError) as err:
        load_config("tiny", ["model.layers=[32"])
    msg = str(err.value)
    assert msg.startswith("--set 'model.layers=[32': the value is not valid YAML (expected ',' or ']'") and "\n" not in msg
    with pytest.raises(SbrjobError, match="duplicate key 'a'"):
        load_config("tiny", ["data.columns={a: x, a: y}"])
    with pytest.raises(SbrjobError, match="is not a key"):
        load_config("tiny", ["train..lr=1"])


def test_non_utf8_config_names_the_line(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_bytes("name: x\n# caf\u00e9\n".encode("latin-1"))
    with pytest.raises(SbrjobError, match=r"job\.yaml line 2: not UTF-8 text \(byte 0xe9\); save the config as UTF-8"):
        load_config(str(path))
    path.write_bytes("\ufeffname: bom\n".encode())  # a UTF-8 byte order mark is fine
    assert load_config(str(path)).name == "bom"
    with pytest.raises(SbrjobError, match="is a directory"):
        load_config(str(tmp_path))


@pytest.mark.parametrize("key", ["test_path", "valid_path"])
def test_given_files_without_scheme_given_are_refused_naming_both_keys(key):
    with pytest.raises(SbrjobError) as err:
        load_config("yoochoose", [f"data.{key}=x.txt"])
    msg = str(err.value)
    assert f"data.{key}: is only read with split.scheme 'given', but split.scheme is 'days'" in msg
    assert f"set split.scheme: given, or remove data.{key}" in msg
    cfg = load_config("yoochoose", ["data.format=gru4rec", f"data.{key}=x.txt", "data.test_path=t.txt",
                                    "split.scheme=given"])
    assert getattr(cfg.data, key) == "x.txt" or key == "test_path"


def test_data_encoding_time_unit_and_drop_duplicates():
    cfg = load_config("tiny", ["data.encoding=latin-1", "data.time_unit=us", "sessions.drop_duplicates=true"])
    assert (cfg.data.encoding, cfg.data.time_unit, cfg.sessions.drop_duplicates) == ("latin-1", "us", True)
    with pytest.raises(SbrjobError, match=r"data\.encoding: unknown encoding 'utf-9'"):
        load_config("tiny", ["data.encoding=utf-9"])
    with pytest.raises(SbrjobError, match=r"data\.time_unit: 'iso' is only for data\.format table"):
        load_config("movielens", ["data.time_unit=iso"])
    with pytest.raises(SbrjobError, match=r"data\.time_unit: 'msec' is not one of .*did you mean 'ms'"):
        load_config("tiny", ["data.time_unit=msec"])


def test_jit_compile_takes_booleans_auto_and_dense_and_is_not_part_of_a_run_fingerprint():
    from sbrjob import runs

    assert load_config("tiny").train.jit_compile == "auto"
    values = {v: load_config("tiny", [f"train.jit_compile={v}"]).train.jit_compile for v in ("dense", "true", "false")}
    assert values == {"dense": "dense", "true": True, "false": False}
    with pytest.raises(SbrjobError, match=r"train\.jit_compile: expected bool or one of auto\|dense"):
        load_config("tiny", ["train.jit_compile=fast"])
    manifest = {"data_digest": "d", "export_fingerprint": "e"}
    assert runs.run_fingerprint(load_config("tiny", ["train.jit_compile=dense"]), manifest) == \
        runs.run_fingerprint(load_config("tiny"), manifest)  # a speed setting: resuming may change it
