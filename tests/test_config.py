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
