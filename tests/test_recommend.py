"""Recommendations for a session given as ids or forgiving titles, from a run directory."""

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from sbrjob.errors import SbrjobError
from sbrjob.recommend import ItemMatcher, recommend, session_scores


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory as `sbrjob train` leaves it (config.yaml, data/, checkpoints/best) with an
    untrained model: recommend only needs the contract of `sbrjob.runs.load_trained`."""
    from sbrjob.config import load_config, save_config
    from sbrjob.model import GRU4Rec
    from sbrjob.prepare import prepare

    from conftest import load_items

    out = str(tmp_path_factory.mktemp("rec") / "run")
    cfg = load_config("tiny", [f"output_dir={out}"])
    prepare(cfg)
    save_config(cfg, out)
    model = GRU4Rec(cfg.model, len(load_items(cfg.data_dir)), seed=5)
    tf.train.Checkpoint(model=model).save(f"{cfg.checkpoint_dir}/best/ckpt")
    return out


def _items():
    return pd.DataFrame({
        "index": np.arange(5, dtype=np.int32),
        "item_id": ["2571", "47", "1193", "3000", "58"],
        "title": ["Matrix, The (1999)", "Seven (Se7en) (1995)", "One Flew Over the Cuckoo's Nest (1975)",
                  "Matrix, The (1962)", "Postino, Il (The Postman) (1994)"],
        "genres": ["Action", "Thriller", "Drama", "Drama", "Romance"],
        "support": np.array([50, 20, 30, 2, 5]),
    })


@pytest.mark.parametrize("text, index", [
    ("2571", 0), ("Matrix, The (1999)", 0), ("the matrix", 0), ("THE MATRIX (1999)", 0),
    ("matrix", 0),  # year left out: the most supported of the two
    ("The Matrix (1962)", 3), ("se7en", 1), ("Seven", 1), ("one flew over the cuckoos nest", 2),
    ("Il Postino", 4), ("The Postman (1994)", 4),
])
def test_title_matching(text, index):
    assert ItemMatcher(_items()).find(text) == index


def test_parse_joins_comma_titles_and_reports_unknown():
    found, unknown = ItemMatcher(_items()).parse("Matrix, The (1999), 1193,nope, Seven")
    assert [i for _, i in found] == [0, 2, 1]
    assert unknown == ["nope"]
    found, _ = ItemMatcher(_items()).parse("Matrix, The; 47")  # ';' as separator keeps commas in titles
    assert [i for _, i in found] == [0, 1]


def test_recommend_by_ids(run_dir):
    from sbrjob.recommend import format_table
    from sbrjob.runs import load_trained

    from conftest import load_items

    items = load_items(f"{run_dir}/data")
    ids = items["item_id"].tolist()[:3]
    got = recommend(run_dir, ",".join(ids), k=5)
    table = format_table(got)
    assert "rank" in table and got["recommendations"][0]["item_id"] in table
    # the same as stepping the model by hand, without the items already in the session
    model = load_trained(run_dir).model
    scores = session_scores(model, [0, 1, 2])
    scores[[0, 1, 2]] = -np.inf
    want = [ids_ for ids_ in items["item_id"].to_numpy()[np.argsort(-scores, kind="stable")[:5]]]
    assert [r["item_id"] for r in got["recommendations"]] == want
    assert [r["rank"] for r in got["recommendations"]] == [1, 2, 3, 4, 5]
    assert all(r["title"].startswith("Synthetic Movie") for r in got["recommendations"])
    assert [s["item_id"] for s in got["session"]] == ids and got["unknown"] == []


def test_recommend_titles_json_and_unknown(run_dir):
    from typer.testing import CliRunner

    from sbrjob.cli import app

    got = recommend(run_dir, "synthetic movie 18, no such film, 148", k=3)
    printed = CliRunner().invoke(app, ["recommend", "--run", run_dir, "--items", "synthetic movie 18, no such film, 148",
                                       "-k", "3", "--json"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.output) == got
    assert [s["item_id"] for s in got["session"]] == ["18", "148"]
    assert got["unknown"] == ["no such film"]
    assert len(got["recommendations"]) == 3


@pytest.mark.parametrize("text", ["", " , ", "nothing, known"])
def test_empty_session_is_an_error(run_dir, text):
    with pytest.raises(SbrjobError, match="session is empty"):
        recommend(run_dir, text)
