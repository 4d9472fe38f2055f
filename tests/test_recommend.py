"""Recommendations for a session given as ids or forgiving titles, from a run directory."""

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from sbrjob.errors import SbrjobError
from sbrjob.recommend import ItemMatcher, recommend, session_scores

from conftest import cli


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


# ---------------------------------------------------------------- titles that forgive more


def _star_wars():
    return pd.DataFrame({
        "index": np.arange(6, dtype=np.int32),
        "item_id": ["2628", "1196", "260", "1210", "541", "2571"],
        "title": ["Star Wars: Episode I - The Phantom Menace (1999)",
                  "Star Wars: Episode V - The Empire Strikes Back (1980)",
                  "Star Wars: Episode IV - A New Hope (1977)",
                  "Star Wars: Episode VI - Return of the Jedi (1983)", "Blade Runner (1982)", "Matrix, The (1999)"],
        "genres": ["Sci-Fi"] * 6,
        "support": np.array([1050, 1438, 1447, 1390, 845, 1800]),
    })


@pytest.mark.parametrize("text, item_id", [
    ("Star Wars", "260"),  # the start of several titles: the most supported
    ("star wars (1980)", "1196"), ("Star Wars: Episode VI", "1210"), ("empire strikes back", "1196"),
    ("jedi", "1210"), ("phantom menace star wars", "2628"),  # all the words, in any order
    ("Blade Runner", "541"), ("the matrix", "2571"),
])
def test_loose_title_matching(text, item_id):
    m = ItemMatcher(_star_wars())
    assert m.items.at[m.find(text), "item_id"] == item_id


@pytest.mark.parametrize("text", ["Blade Runer", "bladerunner", "9999", "ab", "The", "Sta"])
def test_no_loose_match(text):
    assert ItemMatcher(_star_wars()).find(text) is None  # near misses, plain numbers, stubs


def test_near_misses_are_suggested_not_used():
    m = ItemMatcher(_star_wars())
    assert m.suggest("Blade Runer") == ["Blade Runner (1982)"]
    assert m.suggest("Matrx") == ["Matrix, The (1999)"]
    assert m.suggest("nothing like it") == [] and m.suggest("12345") == []
    found, unknown = m.parse("Blade Runer, Star Wars, 2571")
    assert [i for _, i in found] == [2, 5] and unknown == ["Blade Runer"]


def test_real_movielens_titles():
    """On the real ML-1M catalogue: "Star Wars" is Episode IV (the most rated), near misses suggested."""
    from conftest import shared_path

    movies = pd.read_csv(shared_path("ml-1m", "movies.dat"), sep="::", engine="python", encoding="latin-1",
                         names=["item_id", "title", "genres"])
    rated = pd.read_csv(shared_path("ml-1m", "ratings.dat.gz"), sep=":", usecols=[2], header=None)[2].value_counts()
    items = movies.assign(index=np.arange(len(movies), dtype=np.int32), item_id=movies["item_id"].astype(str),
                          support=movies["item_id"].map(rated).fillna(0).astype(np.int64).to_numpy())
    m = ItemMatcher(items)
    title = lambda text: items.at[m.find(text), "title"]  # noqa: E731
    assert title("Star Wars") == "Star Wars: Episode IV - A New Hope (1977)"
    assert title("The Matrix") == "Matrix, The (1999)" and title("toy story") == "Toy Story (1995)"
    assert title("Se7en") == "Seven (Se7en) (1995)" and title("1193") == "One Flew Over the Cuckoo's Nest (1975)"
    assert m.find("Blade Runer") is None and m.suggest("Blade Runer")[0] == "Blade Runner (1982)"


def test_recommend_reports_suggestions(run_dir):
    got = recommend(run_dir, "synthetic movei 18, 148", k=3)
    assert got["unknown"] == ["synthetic movei 18"]
    assert got["suggestions"]["synthetic movei 18"][0].startswith("Synthetic Movie 18 (")
    from sbrjob.recommend import format_table

    assert "did you mean Synthetic Movie 18 (" in format_table(got)
    with pytest.raises(SbrjobError, match=r"session is empty .*did you mean 'Synthetic Movie 18 \("):
        recommend(run_dir, "synthetic movei 18")


# ---------------------------------------------------------------- batch: --sessions FILE


def _cli(*args):
    """(exit code, the command's stdout or its one error line)."""
    result = cli(*args)
    return result.exit_code, result.error or result.stdout


def test_read_sessions_jsonl_and_csv(tmp_path):
    from sbrjob.recommend import read_sessions

    p = tmp_path / "s.jsonl"
    p.write_text('{"session_id": "a", "items": ["1", 2]}\n\n{"session": 7, "items": "Matrix, The; 3"}\n')
    assert [(s.session_id, s.items, s.line) for s in read_sessions(str(p))] == [
        ("a", ["1", "2"], 1), ("7", "Matrix, The; 3", 3)]
    wide = tmp_path / "wide.csv"
    wide.write_text('session_id,items\na,"1;2;3"\nb,4\n')
    assert [(s.session_id, s.items) for s in read_sessions(str(wide))] == [("a", "1;2;3"), ("b", "4")]
    long = tmp_path / "clicks.tsv"
    long.write_text("session_id\titem_id\nb\t1\na\t5\nb\t2\n")
    assert [(s.session_id, s.items, s.line) for s in read_sessions(str(long))] == [
        ("b", ["1", "2"], 2), ("a", ["5"], 3)]
    sniffed = tmp_path / "sessions.txt"
    sniffed.write_text('{"id": "x", "items": []}\n')
    assert read_sessions(str(sniffed))[0].session_id == "x"


@pytest.mark.parametrize("name, text, message", [
    ("s.jsonl", '{"session_id": "a", "items": ["1"]}\n{"session_id": "b", "items": [1,}\n',
     r"s.jsonl line 2: not valid JSON"),
    ("s.jsonl", '{"session_id": "a", "items": ["1"]}\n["b", "1"]\n', r"s.jsonl line 2: a JSON list, not an object"),
    ("s.jsonl", '{"user": "a", "items": ["1"]}\n', r"s.jsonl line 1: no \"session_id\" key"),
    ("s.jsonl", '{"session_id": "a"}\n', r"s.jsonl line 1: no \"items\" key"),
    ("s.jsonl", '{"session_id": "a", "items": ["1", null]}\n', r"line 1: \"items\" holds null"),
    ("s.jsonl", '{"session_id": "a", "items": 5}\n', r"line 1: \"items\" must be a list"),
    ("s.jsonl", '{"session_id": [1], "items": []}\n', r"line 1: \"session_id\" must be a string or an integer"),
    ("s.csv", "user,movie\na,1\n", r"s.csv line 1: header 'user,movie' lacks the columns"),
    ("s.csv", "session_id,item_id\na,1\nb,2,3\n", r"s.csv line 3: 3 fields where the header has 2"),
    ("s.csv", "session_id,item_id\n,1\n", r"s.csv line 2: empty session_id"),
    ("missing.jsonl", None, r"--sessions .*missing.jsonl: no such file"),
])
def test_malformed_sessions_name_the_line(tmp_path, name, text, message):
    from sbrjob.recommend import read_sessions

    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(SbrjobError, match=message):
        read_sessions(str(tmp_path / name))


@pytest.mark.parametrize("kernel", [True, False], ids=["numba-topk", "tf-topk"])
def test_batch_matches_single_session_recommend(run_dir, kernel):
    from sbrjob.recommend import BatchRecommender
    from sbrjob.runs import load_trained

    trained = load_trained(run_dir)
    ids = trained.items["item_id"].tolist()
    rng = np.random.default_rng(1)
    sessions = [(f"s{n}", [ids[i] for i in rng.integers(0, len(ids), rng.integers(1, 15))]) for n in range(30)]
    sessions += [("titles", "Synthetic Movie 18; no such film"), ("unknown", ["nope", "99999"]), ("empty", [])]
    batch = BatchRecommender(run_dir, k=7, batch_size=8, trained=trained, kernel=kernel)  # batches, windows of 16
    batch.SCORE_CELLS = 3 * len(ids)  # kernel: scores in slices of 3 rows
    got = list(batch.run(sessions, window=16))
    assert [g["session_id"] for g in got] == [s for s, _ in sessions]
    for (sid, items), g in zip(sessions[:30], got):
        indices = [ids.index(i) for i in items]
        scores = session_scores(trained.model, indices)
        scores[indices] = -np.inf
        top = np.argsort(-scores, kind="stable")[:7]
        assert g["item_ids"] == [ids[i] for i in top], sid
        np.testing.assert_allclose(g["scores"], scores[top], rtol=1e-5, atol=1e-5)
        assert g["known"] == len(items) and g["unknown"] == []
    titles = recommend(run_dir, "Synthetic Movie 18; no such film", k=7)
    assert got[30]["item_ids"] == [r["item_id"] for r in titles["recommendations"]]
    assert got[30]["known"] == 1 and got[30]["unknown"] == ["no such film"]
    for g in got[-2:]:  # nothing known: the zero-state ranking, never an error
        assert g["known"] == 0 and len(g["item_ids"]) == 7
    assert got[-2]["unknown"] == ["nope", "99999"] and got[-2]["item_ids"] == got[-1]["item_ids"]
    # k bounded by the catalogue; the seen items are left out, not filled with placeholders
    whole = BatchRecommender(run_dir, k=10**6, trained=trained, kernel=kernel)
    for (_, items), g in zip(sessions[:5], whole.run(sessions[:5])):
        assert len(g["item_ids"]) == len(ids) - len(set(items)) and not set(g["item_ids"]) & set(items)
        assert np.all(np.isfinite(g["scores"])) and g["scores"] == sorted(g["scores"], reverse=True)


def test_batch_cli_jsonl_and_csv(run_dir, tmp_path):
    from conftest import load_items

    ids = load_items(f"{run_dir}/data")["item_id"].tolist()
    jsonl = tmp_path / "sessions.jsonl"
    jsonl.write_text("".join(json.dumps({"session_id": n, "items": ids[n:n + 3] + ["nope"]}) + "\n" for n in range(5)))
    code, printed = _cli("recommend", "--run", run_dir, "--sessions", jsonl, "-k", "4")
    assert code == 0, printed
    lines = [json.loads(line) for line in printed.splitlines()]
    assert [x["session_id"] for x in lines] == ["0", "1", "2", "3", "4"]
    assert all(x["unknown"] == ["nope"] and x["known"] == 3 and len(x["item_ids"]) == 4 for x in lines)
    assert not set(lines[0]["item_ids"]) & set(ids[0:3])  # seen items left out by default
    csv = tmp_path / "clicks.csv"
    csv.write_text("session_id,item_id\n" + "".join(f"{n},{i}\n" for n in range(5) for i in ids[n:n + 3] + ["nope"]))
    out = tmp_path / "out" / "recs.jsonl"
    code, printed = _cli("recommend", "--run", run_dir, "--sessions", csv, "-k", "4", "--out", out)
    assert code == 0 and printed == ""
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines
    code, printed = _cli("recommend", "--run", run_dir, "--sessions", csv, "--items", "1")
    assert code == 2 and "one of them" in printed
    code, printed = _cli("recommend", "--run", run_dir)
    assert code == 2 and "--items" in printed
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"session_id": 1, "items": ["1"]}\n{"session_id": 2, "items": "1"\n')
    code, printed = _cli("recommend", "--run", run_dir, "--sessions", bad)
    assert code == 2 and "bad.jsonl line 2: not valid JSON" in printed
