"""Readers on tiny hand-made files with each real format's quirks, and bad input."""

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sbrjob.config import DataConfig
from sbrjob.errors import SbrjobError
from sbrjob.readers import read_events, read_items

# 2014-04-07T10:51:09.277Z; PROVENANCE.md of the shared YOOCHOOSE data quotes the same instant as
# naive-CEST epoch 1396860669.277, i.e. UTC 1396860669.277 + 7200.
T_YC = 1396867869.277


def write(path, text, encoding="utf-8"):
    data = text.encode(encoding)
    if str(path).endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return str(path)


def test_movielens_dat_plain_and_gz_give_the_same_events(tmp_path):
    text = "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
    for name in ("ratings.dat", "ratings.dat.gz"):
        ev = read_events(DataConfig(format="movielens", path=write(tmp_path / name, text)))
        df = ev.frame()
        assert ev.keyed_by == "user"
        assert df["key"].tolist() == [1, 1, 2]
        assert df["item"].tolist() == ["1193", "661", "1193"]
        assert df["time"].tolist() == [978300760.0, 978302109.0, 978298413.0]
        assert df["rating"].tolist() == [5.0, 3.0, 4.0]
        assert ev.time.dtype == np.float64


def test_movies_dat_is_latin1_and_titles_may_contain_colons(tmp_path):
    path = write(tmp_path / "movies.dat",
                 "1::Toy Story (1995)::Animation|Children's|Comedy\n"
                 "73::Misérables, Les (1995)::Drama|Musical\n"
                 "260::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n", encoding="latin-1")
    items = read_items(DataConfig(format="movielens", path="x", items_path=path))
    assert items["item_id"].tolist() == ["1", "73", "260"]
    assert items["title"].tolist()[1:] == ["Misérables, Les (1995)", "Star Wars: Episode IV - A New Hope (1977)"]
    assert items["genres"].tolist()[2] == "Action|Sci-Fi"


def test_movielens_csv_has_header_and_float_ratings(tmp_path):
    path = write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,307,3.5,1256677221\n1,481,4.5,1256677456\n")
    df = read_events(DataConfig(format="movielens", path=path)).frame()
    assert df["rating"].tolist() == [3.5, 4.5]
    assert df["item"].tolist() == ["307", "481"]


def test_yoochoose_iso_utc_with_and_without_category(tmp_path):
    with_cat = ("1,2014-04-07T10:51:09.277Z,214536502,0\n"
                "1,2014-04-07T10:54:46.998Z,214536506,S\n"
                "2,2014-04-07T13:56:37.614Z,214662742,2053\n")
    without = "\n".join(",".join(line.split(",")[:3]) for line in with_cat.splitlines()) + "\n"
    frames = [read_events(DataConfig(format="yoochoose", path=write(tmp_path / n, t))).frame()
              for n, t in (("clicks.dat", with_cat), ("test.dat", without))]
    for df in frames:
        assert df["key"].tolist() == [1, 1, 2]
        assert df["item"].tolist() == ["214536502", "214536506", "214662742"]
        assert df["time"].iloc[0] == pytest.approx(T_YC, abs=1e-6)
        assert df["time"].iloc[1] - df["time"].iloc[0] == pytest.approx(217.721, abs=1e-6)


def test_gru4rec_tsv_header_any_column_order_and_time_offset(tmp_path):
    path = write(tmp_path / "train.txt", "ItemId\tSessionId\tTime\n214536502\t1\t1396860669.277\n214536506\t1\t1396860886.998\n")
    ev = read_events(DataConfig(format="gru4rec", path=path, time_offset=7200))
    assert ev.keyed_by == "session"
    assert ev.frame()["time"].iloc[0] == pytest.approx(T_YC, abs=1e-6)
    assert ev.frame()["item"].tolist() == ["214536502", "214536506"]


def test_table_csv_with_column_mapping_string_ids_and_ms(tmp_path):
    path = write(tmp_path / "log.csv", 'visitor,ts,product,extra\nu1,1000500,"A,1",x\nu1,1002000,B,y\nu2,999000,A,z\n')
    cfg = DataConfig(format="table", path=path, columns={"user": "visitor", "item": "product", "time": "ts"},
                     time_unit="ms")
    ev = read_events(cfg)
    df = ev.frame()
    assert ev.keyed_by == "user"
    assert df["item"].tolist() == ["A,1", "B", "A"]
    assert df["time"].tolist() == [1000.5, 1002.0, 999.0]
    assert df["key"].iloc[0] == df["key"].iloc[1] != df["key"].iloc[2]


def test_table_tsv_by_extension_and_iso_times(tmp_path):
    path = write(tmp_path / "log.tsv", "sid\titem\twhen\n7\tx\t2014-04-07T10:51:09.277Z\n7\ty\t2014-04-07T12:51:09.277+02:00\n")
    cfg = DataConfig(format="table", path=path, columns={"session": "sid", "item": "item", "time": "when"}, time_unit="iso")
    df = read_events(cfg).frame()
    assert df["time"].tolist() == pytest.approx([T_YC, T_YC])


def test_table_parquet(tmp_path):
    path = str(tmp_path / "log.parquet")
    pq.write_table(pa.table({"s": [3, 3, 4], "i": [10, 11, 10], "t": [5.0, 6.0, 7.0], "r": [1, 2, 3]}), path)
    cfg = DataConfig(format="table", path=path, columns={"session": "s", "item": "i", "time": "t", "rating": "r"})
    df = read_events(cfg).frame()
    assert df["item"].tolist() == ["10", "11", "10"]
    assert df["rating"].tolist() == [1.0, 2.0, 3.0]
    pq.write_table(pa.table({"s": [3, None], "i": [10, 11], "t": [5.0, 6.0], "r": [1, 2]}), path)
    with pytest.raises(SbrjobError, match=r"column 's' has 1 null value\(s\), first at row 1"):
        read_events(cfg)


GOOD_ML = "1::10::5::978300760\n1::11::3::978302109\n"


@pytest.mark.parametrize("bad_line, reason", [
    ("2,12,4,978300000", "expected 4 fields separated by '::', found 1"),  # wrong separator
    ("2::12::4", "expected 4 fields"),  # missing field
    ("2::x12::4::978300000", "column 'item' should be an integer"),  # non-numeric id
    ("2::12::4::", "column 'time' should be a finite number"),  # empty time
    ("2::12::4::nan", "column 'time' should be a finite number"),  # pyarrow would accept NaN
])
def test_bad_movielens_line_names_file_and_line(tmp_path, bad_line, reason):
    path = write(tmp_path / "ratings.dat.gz", GOOD_ML + bad_line + "\n" + GOOD_ML)
    with pytest.raises(SbrjobError) as err:
        read_events(DataConfig(format="movielens", path=path))
    msg = str(err.value)
    assert msg.startswith(f"{path}, line 3: ") and reason in msg and "on_bad_lines" in msg
    assert "\n" not in msg


def test_bad_yoochoose_timestamp_names_line(tmp_path):
    path = write(tmp_path / "clicks.dat", "1,2014-04-07T10:51:09.277Z,5,0\n\n1,2014-04-07 10:51,6,0\n")
    with pytest.raises(SbrjobError, match=r"clicks\.dat, line 3: column 'time' should be an ISO-8601 time"):
        read_events(DataConfig(format="yoochoose", path=path))
    path = write(tmp_path / "clicks2.dat", "1,2014-04-07T10:51:09.277Z,5,0\n1,2014-13-07T10:51:09.277Z,6,0\n")
    with pytest.raises(SbrjobError, match=r"clicks2\.dat, line 2: column 'time'"):
        read_events(DataConfig(format="yoochoose", path=path))


def test_skip_counts_and_drops_bad_lines(tmp_path):
    lines = [GOOD_ML.strip(), "2,12,4,978300000", "2::x::4::978300000", "3::13::4::978300001", "3::14::2"]
    path = write(tmp_path / "ratings.dat", "\n".join(lines) + "\n")
    ev = read_events(DataConfig(format="movielens", path=path, on_bad_lines="skip"))
    assert ev.bad_lines == 3
    assert ev.frame()["item"].tolist() == ["10", "11", "13"]
    # only field-count errors: handled on the fast path, same count
    path = write(tmp_path / "r2.dat", GOOD_ML + "1::2\n" + GOOD_ML)
    ev = read_events(DataConfig(format="movielens", path=path, on_bad_lines="skip"))
    assert (ev.bad_lines, len(ev)) == (1, 4)


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(SbrjobError, match=r"nope\.dat: input file not found"):
        read_events(DataConfig(format="movielens", path=str(tmp_path / "nope.dat")))
    with pytest.raises(SbrjobError, match=r"empty\.dat: empty input"):
        read_events(DataConfig(format="yoochoose", path=write(tmp_path / "empty.dat", "")))
    with pytest.raises(SbrjobError, match=r"head\.txt: no data lines"):
        read_events(DataConfig(format="gru4rec", path=write(tmp_path / "head.txt", "SessionId\tItemId\tTime\n")))
    with pytest.raises(SbrjobError, match=r"line 1: expected a tab-separated header"):
        read_events(DataConfig(format="gru4rec", path=write(tmp_path / "x.txt", "a,b,c\n1,2,3\n")))
    with pytest.raises(SbrjobError, match=r"not in the header .*data.separator"):
        read_events(DataConfig(format="table", path=write(tmp_path / "t.csv", "s;i;t\n1;2;3\n"),
                               columns={"session": "s", "item": "i", "time": "t"}))
