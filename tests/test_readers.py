"""Readers on tiny hand-made files with each real format's quirks, and bad input."""

import gzip
import re

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


# ---------------------------------------------------------------- times out of range, units


def ml_rows(unit=1, n=10):
    return "".join(f"{u}::{j}::3::{(978300760 + 100 * u + j) * unit}\n" for u in range(1, n + 1) for j in range(3))


@pytest.mark.parametrize("value", ["100000000000000000000", "-99999999999", "978300760000", "4102444800"])
def test_a_time_out_of_range_names_its_line(tmp_path, value):
    path = write(tmp_path / "ratings.dat", ml_rows() + f"99::1::3::{value}\n" + ml_rows(n=2))
    with pytest.raises(SbrjobError) as err:
        read_events(DataConfig(format="movielens", path=path))
    assert str(err.value).startswith(f"{path}, line 31: column 'time' = '{value}' is outside 1970..2099 as seconds "
                                     "(data.time_unit: s); fix the line or set data.on_bad_lines: skip")
    ev = read_events(DataConfig(format="movielens", path=path, on_bad_lines="skip"))
    assert ev.bad_lines == 1 and len(ev) == 36


@pytest.mark.parametrize("unit, scale, name", [("ms", 1000, "milliseconds"), ("us", 10**6, "microseconds"),
                                              ("ns", 10**9, "nanoseconds")])
def test_a_whole_column_in_another_unit_says_so_and_time_unit_reads_it(tmp_path, unit, scale, name):
    path = write(tmp_path / "ratings.dat", ml_rows(scale))
    for skip in ("error", "skip"):  # skipping would drop every line: refused either way
        with pytest.raises(SbrjobError, match=rf"ratings\.dat: column 'time' looks like {name}, not seconds: "
                                              rf"e\.g\. \d+ is year \d+ as seconds but 2000-12-31 as {name}; "
                                              rf"set data\.time_unit: {unit}"):
            read_events(DataConfig(format="movielens", path=path, on_bad_lines=skip))
    ev = read_events(DataConfig(format="movielens", path=path, time_unit=unit))
    assert ev.time.min() == pytest.approx(978300860.0)


def test_time_unit_applies_to_gru4rec_and_table(tmp_path):
    path = write(tmp_path / "train.txt", "SessionId\tItemId\tTime\n1\t5\t1396860669277\n1\t6\t1396860886998\n")
    with pytest.raises(SbrjobError, match="looks like milliseconds.*data.time_unit: ms"):
        read_events(DataConfig(format="gru4rec", path=path))
    ev = read_events(DataConfig(format="gru4rec", path=path, time_unit="ms"))
    assert ev.time.tolist() == pytest.approx([1396860669.277, 1396860886.998])
    path = write(tmp_path / "log.csv", "u,i,t\na,x,1396860669277000\na,y,1396860886998000\n")
    cols = {"user": "u", "item": "i", "time": "t"}
    with pytest.raises(SbrjobError, match="looks like microseconds.*data.time_unit: us"):
        read_events(DataConfig(format="table", path=path, columns=cols))
    assert read_events(DataConfig(format="table", path=path, columns=cols, time_unit="us")).time[0] == \
        pytest.approx(1396860669.277)


def test_iso_times_out_of_range_and_parquet_rows(tmp_path):
    path = write(tmp_path / "clicks.dat", "1,2014-04-07T10:51:09.277Z,5\n1,1969-12-31T23:59:59.000Z,6\n")
    with pytest.raises(SbrjobError, match=r"clicks\.dat, line 2: column 'time' = '1969-12-31T23:59:59\.000Z' is "
                                          r"outside 1970\.\.2099 as ISO-8601"):
        read_events(DataConfig(format="yoochoose", path=path))
    pq_path = str(tmp_path / "log.parquet")
    cfg = DataConfig(format="table", path=pq_path, columns={"session": "s", "item": "i", "time": "t"})
    pq.write_table(pa.table({"s": [1, 1, 2], "i": [1, 2, 3], "t": [1e9, float("nan"), 1e9]}), pq_path)
    with pytest.raises(SbrjobError, match=r"log\.parquet, row 2: column 't' = nan is outside 1970\.\.2099"):
        read_events(cfg)
    pq.write_table(pa.table({"s": [1, 1], "i": [1, 2], "t": [1.4e12, 1.4e12 + 5]}), pq_path)
    with pytest.raises(SbrjobError, match=r"log\.parquet: column 't' looks like milliseconds"):
        read_events(cfg)


# ---------------------------------------------------------------- unreadable files, the right key


def test_truncated_and_fake_gzip_and_bzip2_are_named(tmp_path):
    yc = "".join(f"{s},2014-04-07T10:51:{s % 60:02d}.277Z,{s}\n" for s in range(3000))
    for fmt, name, text in (("movielens", "ratings.dat.gz", ml_rows(n=300)), ("yoochoose", "clicks.dat.gz", yc)):
        data = gzip.compress(text.encode())
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(SbrjobError, match=rf"{re.escape(name)}: truncated gzip file .*fetch the file again"):
            read_events(DataConfig(format=fmt, path=str(path)))
    path = tmp_path / "plain.dat.gz"
    path.write_text(ml_rows())
    with pytest.raises(SbrjobError, match=r"plain\.dat\.gz: not gzip data although the name ends in \.gz \(it starts "
                                          r"with b'1:'\); if it is plain text, rename it without \.gz"):
        read_events(DataConfig(format="movielens", path=str(path)))
    path = tmp_path / "plain.dat.bz2"
    path.write_text(ml_rows())
    with pytest.raises(SbrjobError, match=r"plain\.dat\.bz2: not bzip2 data"):
        read_events(DataConfig(format="movielens", path=str(path)))
    items = tmp_path / "movies.dat.gz"
    items.write_bytes(b"1::Toy Story::Comedy\n")
    with pytest.raises(SbrjobError, match=r"movies\.dat\.gz: not gzip data.*set data\.items_path"):
        read_items(DataConfig(format="movielens", path="x", items_path=str(items)))


def test_directories_and_missing_files_name_their_key(tmp_path):
    (tmp_path / "ml").mkdir()
    (tmp_path / "ml" / "ratings.dat").write_text(ml_rows())
    d = str(tmp_path / "ml")
    with pytest.raises(SbrjobError, match=r"ml: is a directory, not a file \(it holds ratings\.dat\); set data\.path to "
                                          r"the raw log inside it"):
        read_events(DataConfig(format="movielens", path=d))
    with pytest.raises(SbrjobError, match=r"ml: is a directory.*set data\.items_path to the items file"):
        read_items(DataConfig(format="movielens", path="x", items_path=d))
    with pytest.raises(SbrjobError, match=r"nope\.dat: input file not found .*set data\.items_path .*or null"):
        read_items(DataConfig(format="movielens", path="x", items_path=str(tmp_path / "nope.dat")))
    cfg = DataConfig(format="gru4rec", path=str(tmp_path / "tr.txt"), test_path=d)
    with pytest.raises(SbrjobError, match=r"ml: is a directory.*set data\.test_path"):
        read_events(cfg, d)


def test_encoding_errors_name_line_and_data_encoding_reads_them(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes("visitor,item,ts\nu1,caf\u00e9,1000\nu1,b,1001\nu2,caf\u00e9,999\n".encode("latin-1"))
    cols = {"user": "visitor", "item": "item", "time": "ts"}
    with pytest.raises(SbrjobError) as err:
        read_events(DataConfig(format="table", path=str(path), columns=cols))
    assert str(err.value).startswith(f"{path}, line 2: column 'item' is not valid utf-8 text (byte 0xe9); set "
                                     "data.encoding to the file's encoding (e.g. latin-1 or cp1252)")
    ev = read_events(DataConfig(format="table", path=str(path), columns=cols, encoding="latin-1"))
    assert ev.frame()["item"].tolist() == ["caf\u00e9", "b", "caf\u00e9"]
    ev = read_events(DataConfig(format="table", path=str(path), columns=cols, on_bad_lines="skip"))
    assert ev.bad_lines == 2 and ev.frame()["item"].tolist() == ["b"]


def test_string_keys_keep_their_original_ids(tmp_path):
    path = write(tmp_path / "log.csv", "s,i,t\nzz,1,10\naa,2,11\nzz,3,12\n")
    ev = read_events(DataConfig(format="table", path=path, columns={"session": "s", "item": "i", "time": "t"}))
    assert ev.key_ids.tolist() == ["aa", "zz"] and ev.frame()["key"].tolist() == ["zz", "aa", "zz"]
