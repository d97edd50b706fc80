"""Loaders: every supported format from tiny hand-written fixtures, and bad inputs."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sidkit.data import (ItemTable, detect_format, item_texts, load_amazon, load_dataset, load_item_table,
                         load_table)
from sidkit.errors import DataError, EncodingWarning

FIX = Path(__file__).parent / "fixtures" / "data"
# the rows every MovieLens-style fixture holds: (user, item, rating, timestamp)
ROWS = [(1, 10, 5, 100), (1, 20, 3, 200), (1, 30, 4, 200), (1, 40, 2, 300), (2, 10, 4, 150),
        (2, 30, 5, 250), (2, 50, 1, 350), (3, 20, 2, 120), (3, 40, 3, 220), (3, 50, 4, 320),
        (4, 10, 1, 400)]


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("SIDKIT_NO_PROGRESS", "1")


def _check_rows(inter, prefix_u="", prefix_i=""):
    df = inter.df
    assert list(df.columns[:3]) == ["user_id", "item_id", "timestamp"]
    assert df["timestamp"].dtype == np.int64
    got = list(zip(df["user_id"], df["item_id"], df["timestamp"]))
    assert got == [(f"{prefix_u}{u}", f"{prefix_i}{i}", t) for u, i, _, t in ROWS]
    assert all(isinstance(x, str) for x in df["user_id"])
    assert inter.n_users == 4 and inter.n_items == 5 and len(inter) == len(ROWS)
    assert list(inter.users) == [f"{prefix_u}{u}" for u in (1, 2, 3, 4)]


# ------------------------------------------------------------------------ MovieLens
def test_grouplens_100k():
    ds = load_dataset(FIX / "grouplens100k", name="toy")
    _check_rows(ds.interactions)
    assert ds.interactions.df["rating"].dtype == np.float64
    items = ds.items.df.set_index("item_id")
    assert items.loc["20", "title"] == "Misérables, Les"  # latin-1 byte decoded
    assert items.loc["10", "year"] == 1995 and items.loc["50", "decade"] == "1940s"
    assert items.loc["30", "genres"] == ["Action", "Crime", "Thriller"]
    assert items.loc["40", "genres"] == [] and pd.isna(items.loc["40", "title"])
    assert pd.isna(items.loc["40", "year"])
    assert ds.items.categorical_fields == ["genres", "decade"]
    texts = item_texts(ds.items)
    assert texts[0] == "Title: Toy Story. Year: 1995. Genres: Animation, Children's, Comedy."
    assert texts[3] == ""  # everything unknown: no 'nan', no dangling labels
    assert detect_format(FIX / "grouplens100k" / "u.data") == "grouplens-100k"


def test_ratings_dat():
    ds = load_dataset(FIX / "ml1m")
    _check_rows(ds.interactions)
    items = ds.items.df.set_index("item_id")
    assert items.loc["40", "title"] == "City of Lost Children, The (Cité des enfants perdus, La)"
    assert items.loc["40", "year"] == 1995
    assert items.loc["20", "genres"] == ["Drama", "Musical"]


def test_recbole_atomic():
    ds = load_dataset(FIX / "recbole" / "toy.inter")
    _check_rows(ds.interactions)
    assert ds.name == "toy"
    items = ds.items.df.set_index("item_id")
    assert items.loc["20", "title"] == "Misérables, Les"
    assert items.loc["30", "title"] == 'Heat "The Movie"'  # quotes are not CSV quoting
    assert items.loc["30", "genres"] == ["Action", "Crime", "Thriller"]
    assert pd.isna(items.loc["40", "year"]) and items.loc["40", "genres"] == []
    # the directory works too
    assert len(load_dataset(FIX / "recbole").interactions) == len(ROWS)


def test_recbole_latin1(tmp_path):
    (tmp_path / "x.inter").write_bytes(b"user_id:token\titem_id:token\ttimestamp:float\n1\t7\t5.0\n")
    (tmp_path / "x.item").write_bytes("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                      "7\tCité\t1990\tDrama\n".encode("latin-1"))
    with pytest.warns(EncodingWarning, match=r"x\.item is not valid UTF-8 \(byte \d+: b'\\xe9"):
        ds = load_dataset(tmp_path / "x.inter")      # said, not silent: RecBole files are UTF-8
    assert ds.items.df["title"].iloc[0] == "Cité"
    assert ds.interactions.df["timestamp"].iloc[0] == 5


def test_grouplens_files_are_latin1_by_format_and_read_silently():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", EncodingWarning)
        assert load_dataset(FIX / "grouplens100k", name="toy").items.df.set_index("item_id").loc[
            "20", "title"] == "Misérables, Les"


def test_latin1_csv_is_read_with_a_warning(tmp_path):
    p = tmp_path / "events.csv"
    p.write_bytes("user_id,item_id,timestamp\nu1,Café,1\nu1,b,2\n".encode("latin-1"))
    with pytest.warns(EncodingWarning, match="events.csv is not valid UTF-8"):
        inter = load_table(p)
    assert sorted(inter.df["item_id"]) == ["Café", "b"]


@pytest.mark.parametrize("bad", ["50\x00", "50\t", "a\nb", "x\x1f", "\x7fdel"])
def test_ids_with_control_characters_are_refused(tmp_path, bad):
    from sidkit.data import Interactions

    df = pd.DataFrame({"user_id": ["u1", "u1"], "item_id": ["50", bad], "timestamp": [1, 2]})
    with pytest.raises(DataError, match="item_id.*control characters, e.g. " + __import__("re").escape(repr(bad))):
        Interactions(df)
    p = tmp_path / "events.csv"
    df.to_csv(p, index=False)                        # through a file (quoted by pandas where needed)
    if "\n" not in bad:
        with pytest.raises(DataError, match="control characters"):
            load_table(p)
    items = pd.DataFrame({"item_id": ["50", bad], "title": ["a", "b"]})
    with pytest.raises(DataError, match="item table item_id"):
        ItemTable(items)


# ----------------------------------------------------------------------------- Amazon
def _write_gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_amazon_2014(tmp_path):
    reviews = [
        {"reviewerID": "A1", "asin": "B01", "overall": 5.0, "unixReviewTime": 1000, "reviewText": "great"},
        {"reviewerID": "A1", "asin": "B02", "overall": 3.0, "unixReviewTime": 900},
        {"reviewerID": "A2", "asin": "B01", "overall": 4.0, "unixReviewTime": 1100},
    ]
    _write_gz(tmp_path / "reviews_Beauty_5.json.gz", [json.dumps(r) for r in reviews])
    meta = [  # 2014 meta lines are Python literals, not JSON
        {"asin": "B01", "title": "Lip Balm", "brand": "Burt's Bees", "price": 3.5,
         "categories": [["Beauty", "Skin Care", "Lips", "Balm"], ["Other"]]},
        {"asin": "B02", "title": "Shampoo &amp; Conditioner", "categories": [["Beauty", "Hair Care"]]},
        {"asin": "B99", "title": "not reviewed"},
    ]
    _write_gz(tmp_path / "meta_Beauty.json.gz", [repr(m) for m in meta])
    ds = load_dataset(tmp_path / "reviews_Beauty_5.json.gz")
    inter = ds.interactions
    assert ds.name == "Beauty_5" and inter.time_unit == "s"
    assert list(inter.df["item_id"]) == ["B01", "B02", "B01"]
    assert list(inter.df["timestamp"]) == [1000, 900, 1100]
    assert list(inter.df["rating"]) == [5.0, 3.0, 4.0]
    items = ds.items.df.set_index("item_id")
    assert sorted(items.index) == ["B01", "B02"]  # only reviewed items
    assert items.loc["B01", "categories"] == ["Beauty", "Skin Care", "Lips", "Balm"]
    assert (items.loc["B01", "cat1"], items.loc["B01", "cat2"], items.loc["B01", "cat3"]) == \
        ("Beauty", "Skin Care", "Lips")
    assert items.loc["B02", "title"] == "Shampoo & Conditioner"
    assert pd.isna(items.loc["B02", "cat3"]) and np.isnan(items.loc["B02", "price"])
    texts = dict(zip(ds.items.df["item_id"], item_texts(ds.items)))
    assert texts["B01"] == ("Title: Lip Balm. Brand: Burt's Bees. Categories: Beauty, Skin Care, Lips, Balm. "
                            "Price: 3.5.")
    assert texts["B02"] == "Title: Shampoo & Conditioner. Categories: Beauty, Hair Care."
    assert ds.items.categorical_fields == ["brand", "cat1", "cat2", "cat3"]
    # the directory form finds the same files
    assert len(load_dataset(tmp_path).interactions) == 3


def test_amazon_2018(tmp_path):
    reviews = [{"reviewerID": "U", "asin": "X1", "overall": 5.0, "unixReviewTime": 5, "vote": "2"},
               {"reviewerID": "U", "asin": "X2", "overall": 1.0, "unixReviewTime": 6}]
    _write_gz(tmp_path / "Luxury_Beauty_5.json.gz", [json.dumps(r) for r in reviews])
    meta = [{"asin": "X1", "title": "Cream", "brand": "", "price": "$1,299.00", "category": ["Luxury", "Face"],
             "main_cat": "Luxury Beauty"},
            {"asin": "X2", "title": "Soap", "brand": "Acme", "price": "$10.99 - $20.00", "category": []}]
    _write_gz(tmp_path / "meta_Luxury_Beauty.json.gz", [json.dumps(m) for m in meta])
    ds = load_amazon(tmp_path / "Luxury_Beauty_5.json.gz")
    items = ds.items.df.set_index("item_id")
    assert items.loc["X1", "price"] == 1299.0 and items.loc["X2", "price"] == 10.99
    assert items.loc["X1", "categories"] == ["Luxury", "Face"] and items.loc["X1", "cat1"] == "Luxury"
    assert pd.isna(items.loc["X1", "brand"]) and items.loc["X1", "main_category"] == "Luxury Beauty"


def test_amazon_2023(tmp_path):
    reviews = [{"rating": 4.0, "title": "ok", "asin": "C1v", "parent_asin": "P1", "user_id": "U1",
                "timestamp": 1588687728923, "verified_purchase": True},
               {"rating": 2.0, "asin": "C2", "parent_asin": "P2", "user_id": "U1", "timestamp": 1588687729000}]
    (tmp_path / "All_Beauty.jsonl").write_text("\n".join(json.dumps(r) for r in reviews) + "\n")
    meta = [{"parent_asin": "P1", "title": "Brush", "store": "Brushy", "categories": [], "price": None,
             "main_category": "All Beauty"},
            {"parent_asin": "P2", "title": "Comb", "store": None, "categories": ["Beauty", "Tools"],
             "price": 7.0, "main_category": "All Beauty"}]
    _write_gz(tmp_path / "meta_All_Beauty.jsonl.gz", [json.dumps(m) for m in meta])
    ds = load_dataset(tmp_path / "All_Beauty.jsonl")
    inter = ds.interactions
    assert inter.time_unit == "ms" and list(inter.df["item_id"]) == ["P1", "P2"]
    assert inter.df["timestamp"].iloc[0] == 1588687728923
    texts = item_texts(ds.items)
    assert texts == ["Title: Brush. Brand: Brushy.", "Title: Comb. Categories: Beauty, Tools. Price: 7."]


def test_amazon_bad_files(tmp_path):
    _write_gz(tmp_path / "reviews_X.json.gz", ['{"user": 1, "product": 2}'])
    with pytest.raises(DataError, match="not an Amazon reviews file.*keys"):
        load_dataset(tmp_path / "reviews_X.json.gz")
    _write_gz(tmp_path / "reviews_Y.json.gz", ['{"reviewerID": "a", "asin": "b", "unixReviewTime": 1}',
                                               "this is not json"])
    with pytest.raises(DataError, match="line 2 is neither JSON nor a Python literal"):
        load_amazon(tmp_path / "reviews_Y.json.gz", with_meta=False)
    _write_gz(tmp_path / "reviews_Z.json.gz", ['{"reviewerID": "a", "asin": "b"}'])
    with pytest.raises(DataError, match="lacks the field 'unixReviewTime'"):
        load_amazon(tmp_path / "reviews_Z.json.gz", with_meta=False)
    (tmp_path / "reviews_W.json.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        load_amazon(tmp_path / "reviews_W.json.gz", with_meta=False)
    with pytest.raises(DataError, match="meta file, not reviews"):
        load_dataset(_write_gz(tmp_path / "meta_B.json.gz", ["{}"]))


# ---------------------------------------------------------------------------- tables
def test_csv_with_mapping():
    cols = {"user_id": "uid", "item_id": "iid", "timestamp": "ts", "rating": "stars"}
    inter = load_table(FIX / "table" / "events.csv", cols)
    _check_rows(inter, "u", "i")
    assert inter.df["rating"].tolist() == [float(r) for *_, r, _ in ROWS]
    assert "extra" not in inter.df.columns
    ds = load_dataset(FIX / "table" / "events.csv", columns=cols)
    assert len(ds.interactions) == len(ROWS) and ds.items is None


def test_tsv_with_date_strings():
    inter = load_table(FIX / "table" / "events_dates.tsv", {"user_id": "uid", "item_id": "iid", "timestamp": "when"})
    base = int(pd.Timestamp("2020-01-01", tz="UTC").timestamp())
    assert inter.df["timestamp"].tolist() == [base + t for *_, t in ROWS]
    assert not inter.has_rating


def test_parquet_table(tmp_path):
    df = pd.DataFrame({"u": [1, 1, 2], "i": [5, 6, 5], "t": [3.0, 4.0, 5.0]})
    df.to_parquet(tmp_path / "x.parquet")
    inter = load_dataset(tmp_path / "x.parquet", columns={"user_id": "u", "item_id": "i", "timestamp": "t"}).interactions
    assert inter.df["user_id"].tolist() == ["1", "1", "2"] and inter.df["timestamp"].dtype == np.int64


def test_item_table_csv():
    items = load_item_table(FIX / "table" / "items.csv", item_id="iid", text_fields=["name", "tags", "brand"],
                            categorical_fields=["brand"], list_fields=["tags"], list_sep="|")
    assert items.df["tags"].iloc[0] == ["Animation", "Comedy"]
    assert item_texts(items, "{name} by {brand} ({tags})") == [
        "Toy Story by Pixar (Animation, Comedy)", "Les Misérables (Drama)", "Heat by Warner (Action, Crime)"]
    codes, vocab = items.categorical_codes()["brand"]
    assert vocab == ["Pixar", "Warner"] and codes.tolist() == [1, 0, 2]


# ------------------------------------------------------------------------- bad input
def test_missing_column_names_column_and_found():
    with pytest.raises(DataError) as e:
        load_table(FIX / "table" / "events.csv", {"user_id": "uid", "item_id": "iid", "timestamp": "time"})
    msg = str(e.value)
    assert "'time'" in msg and "columns found" in msg and "'uid'" in msg and "fix:" in msg
    with pytest.raises(DataError, match="no column 'user_id'.*columns found"):
        load_table(FIX / "table" / "events.csv")
    with pytest.raises(DataError, match="unknown key"):
        load_table(FIX / "table" / "events.csv", {"user": "uid"})


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="unknown data set 'ml-42m'") as e:
        load_dataset("ml-42m")
    assert "ml-100k" in str(e.value)
    with pytest.raises(DataError, match="cannot be fetched"):
        load_dataset("amazon-beauty")


def test_wrong_format_files(tmp_path):
    d = tmp_path / "gl"
    d.mkdir()
    (d / "u.data").write_text("1,2,3,4\n5,6,7,8\n")  # commas, not tabs
    with pytest.raises(DataError, match="not in the expected format.*u.data"):
        load_dataset(d)
    (d / "u.data").write_text("1\t2\t3\tyesterday\n")
    with pytest.raises(DataError, match="'timestamp'.*non-numeric.*yesterday"):
        load_dataset(d)
    r = tmp_path / "rb"
    r.mkdir()
    (r / "a.inter").write_text("user_id\titem_id\ttimestamp\n1\t2\t3\n")
    with pytest.raises(DataError, match="not a RecBole atomic file.*no type"):
        load_dataset(r)
    (r / "a.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    with pytest.raises(DataError, match=r"lacks the field\(s\) \['timestamp'\]"):
        load_dataset(r)
    (tmp_path / "weird.xyz").write_text("?")
    with pytest.raises(DataError, match="unknown file type"):
        load_dataset(tmp_path / "weird.xyz")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="cannot tell the data format"):
        load_dataset(empty)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="cannot be read as Parquet"):
        load_table(tmp_path / "bad.parquet")


def test_grouplens_wrong_item_file(tmp_path):
    d = tmp_path / "gl"
    shutil.copytree(FIX / "grouplens100k", d)
    (d / "u.item").write_text("10|Toy Story\n")
    with pytest.raises(DataError, match="u.item"):
        load_dataset(d)
