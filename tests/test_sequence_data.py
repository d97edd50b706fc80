"""Sequence files (P5 / S3-Rec / GRAM: ``USER ITEM ITEM ...`` per line) and JSON Lines
item tables (issue 24, section 1): the loader on small hand-made files, the product
template, FAMAE's fields, the config path, and a 300-user slice of the shared Beauty file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from sidkit.data import (PRODUCT_TEMPLATE, ItemTable, detect_format, item_texts, leave_one_out,
                         load_dataset, load_item_jsonl, load_item_table, load_sequences,
                         read_sequences)
from sidkit.errors import DataError

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-beauty"


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("SIDKIT_NO_PROGRESS", "1")


def _write(path: Path, text: str) -> Path:
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list[dict]) -> Path:
    return _write(path, "".join(json.dumps(r) + "\n" for r in rows))


ITEMS = [
    {"item_id": "B01", "title": "Nail Lacquer &amp; Top Coat", "brand": "OPI",
     "categories": ["Makeup", "Nails", "Nail Polish"]},
    {"item_id": "B02", "title": "L&#39;Oreal Mascara", "brand": None, "categories": ["Makeup", "Eyes"]},
    {"item_id": "B03", "title": "", "brand": "Burt&#39;s Bees", "categories": []},
    {"item_id": "B04", "title": "Shampoo", "categories": ["Hair Care", "Shampoos", "Daily", "Extra"]},
    {"item_id": "B99", "title": "never bought", "brand": "X", "categories": ["Makeup"]},
]


# --------------------------------------------------------------------- the loader
def test_string_ids(tmp_path):
    p = _write(tmp_path / "user_sequence.txt", "A1X B01 B02 B03\nA2Y B02 B01 B04 B03\n")
    inter = read_sequences(p)
    df = inter.df
    assert list(df["user_id"]) == ["A1X"] * 3 + ["A2Y"] * 4
    assert list(df["item_id"]) == ["B01", "B02", "B03", "B02", "B01", "B04", "B03"]
    assert list(df["timestamp"]) == [0, 1, 2, 0, 1, 2, 3]          # the position is the time order
    assert df["timestamp"].dtype == np.int64
    assert inter.name == tmp_path.name                               # user_sequence: the folder's name
    assert detect_format(p) == "sequences" and detect_format(tmp_path) == "sequences"


def test_integer_ids_gz_and_whitespace(tmp_path):
    # S3-Rec's Beauty.txt: integer users and items; ids are text, read as written
    p = _write(tmp_path / "Beauty.txt.gz", "1 1 2 3\r\n2  4 1 007 \r\n10 5 6\n\n\n")
    inter = read_sequences(p)
    assert inter.name == "Beauty"
    assert inter.n_users == 3 and inter.n_items == 7 and len(inter) == 8
    assert list(inter.df["item_id"][3:6]) == ["4", "1", "007"]      # 007 is not 7
    assert all(isinstance(x, str) for x in inter.df["user_id"])
    # tab-separated files read too
    t = _write(tmp_path / "tabs.txt", "1\t1\t2\n2\t3\t4\n")
    assert len(read_sequences(t)) == 4


def test_leave_one_out_follows_the_line_order(tmp_path):
    p = _write(tmp_path / "s.txt", "u1 i3 i1 i2 i9\nu2 i2 i3 i1\n")
    split = leave_one_out(read_sequences(p))
    assert split.sequences(("train",)) == {"u1": ["i3", "i1"], "u2": ["i2"]}
    assert dict(zip(split.valid["user_id"], split.valid["item_id"])) == {"u1": "i2", "u2": "i3"}
    assert dict(zip(split.test["user_id"], split.test["item_id"])) == {"u1": "i9", "u2": "i1"}


@pytest.mark.parametrize("text, match", [
    ("u1 i1 i2\nu2\tu2 i3\n", r"line 2 of .* is ragged: it separates ids by '\\t' where line 1 uses ' '"),
    ("u1 i1 i2\nu2 i1,i2,i3\n", r"line 2 of .* is ragged: it holds ','"),
    ("u1 i1|i2\n", r"line 1 of .* is ragged: it holds '\|'"),
    ("u1 i1 i2\n\nu2 i3 i4\n", r"line 2 of .* is blank"),
    ("u1 i1 i2\nu2\nu3 i1 i3\n", r"line 2 of .* has the user 'u2' and no items"),
    ("u1 i1 i2\nu2 i2\nu1 i3\n", r"user 'u1' has two lines in .* \(lines 1 and 3\)"),
    ("user_id item_id timestamp\n1 2 3\n", r"line 1 of .* looks like a header"),
    ("", r"holds no users"),
    ("\n \n", r"holds no users"),
])
def test_bad_lines_are_data_errors(tmp_path, text, match):
    p = _write(tmp_path / "seq.txt.gz", text)
    with pytest.raises(DataError, match=match) as e:
        read_sequences(p)
    assert e.value.fix  # every error says what to do


def test_a_table_of_interactions_is_not_read_as_sequences(tmp_path):
    # u.data-like "user item rating timestamp" lines: every user has many lines
    p = _write(tmp_path / "ratings.txt", "196 242 3 881250949\n186 302 3 891717742\n196 377 1 878887116\n")
    with pytest.raises(DataError, match=r"user '196' has two lines") as e:
        load_dataset(p)
    assert "format = \"table\"" in e.value.fix
    # a CSV saved as .txt stays a table, as before; so does a .txt read with sep= / columns=
    c = _write(tmp_path / "inter.txt", "user_id,item_id,timestamp\n1,2,3\n")
    assert detect_format(c) == "table" and len(load_dataset(c).interactions) == 1
    t = _write(tmp_path / "inter_tab.txt", "uid\titem_id\ttimestamp\n1\t2\t3\n1\t4\t5\n")
    assert detect_format(t) == "sequences"
    assert len(load_dataset(t, sep="\t", columns={"user_id": "uid"}).interactions) == 2
    assert load_dataset(p, format="table", sep=" ", columns={"user_id": "196", "item_id": "242",
                                                              "timestamp": "881250949"}).interactions.n_users == 2


# ----------------------------------------------------------------- the item table
def test_jsonl_item_table(tmp_path):
    p = _jsonl(tmp_path / "items.jsonl.gz", ITEMS + [{"item_id": 7, "title": "int id", "price": 3.5}])
    items = load_item_jsonl(p)
    df = items.df.set_index("item_id")
    assert list(items.items) == ["B01", "B02", "B03", "B04", "B99", "7"]   # file order; 7 -> "7"
    assert df.loc["B01", "title"] == "Nail Lacquer & Top Coat"               # entities unescaped
    assert df.loc["B02", "title"] == "L'Oreal Mascara" and df.loc["B03", "brand"] == "Burt's Bees"
    assert df.loc["B02", "brand"] is None and df.loc["B04", "brand"] is None  # null and missing key
    assert df.loc["B03", "title"] is None                                     # "" is missing
    assert df.loc["B01", "categories"] == ["Makeup", "Nails", "Nail Polish"]
    assert df.loc["B03", "categories"] == []
    # the category path's levels, for FAMAE's Amazon defaults
    assert [df.loc["B01", c] for c in ("cat1", "cat2", "cat3")] == ["Makeup", "Nails", "Nail Polish"]
    assert [df.loc["B02", c] for c in ("cat1", "cat2", "cat3")] == ["Makeup", "Eyes", None]
    assert df.loc["B03", "cat1"] is None and df.loc["B04", "cat3"] == "Daily"
    assert items.categorical_fields == ["brand", "cat1", "cat2", "cat3"]
    assert items.text_fields == ["title", "brand", "categories", "price"]
    assert items.template == PRODUCT_TEMPLATE
    # it round-trips through the run directory's parquet
    items.save(tmp_path / "saved")
    back = ItemTable.load(tmp_path / "saved")
    assert back.df.set_index("item_id").loc["B01", "categories"] == ["Makeup", "Nails", "Nail Polish"]
    assert item_texts(back) == item_texts(items)
    # raw values when asked; no derived levels with category_levels=0
    raw = load_item_jsonl(p, unescape_html=False, category_levels=0).df.set_index("item_id")
    assert raw.loc["B02", "title"] == "L&#39;Oreal Mascara" and "cat1" not in raw.columns
    # load_item_table reads JSON Lines too
    assert list(load_item_table(p).items) == list(items.items)


def test_jsonl_item_table_errors(tmp_path):
    with pytest.raises(DataError, match=r"record 2 of .* has no 'item_id'; keys found: \['title'\]"):
        load_item_jsonl(_jsonl(tmp_path / "a.jsonl", [{"item_id": "x"}, {"title": "t"}]))
    with pytest.raises(DataError, match=r"item 'x' has two records .* \(records 1 and 2\)"):
        load_item_jsonl(_jsonl(tmp_path / "b.jsonl", [{"item_id": "x"}, {"item_id": "x"}]))
    with pytest.raises(DataError, match=r"c.jsonl line 1 is not a JSON object"):
        load_item_jsonl(_write(tmp_path / "c.jsonl", "[1, 2]\n"))
    with pytest.raises(DataError, match="holds no items"):
        load_item_jsonl(_write(tmp_path / "d.jsonl", "\n"))
    with pytest.raises(DataError, match="do not apply to the JSON Lines"):
        load_item_table(_jsonl(tmp_path / "e.jsonl", [{"item_id": "x"}]), list_sep="|")


def test_product_template_unescaped_and_no_dangling_labels(tmp_path):
    items = load_item_jsonl(_jsonl(tmp_path / "items.jsonl", ITEMS))
    texts = dict(zip(items.items, item_texts(items)))
    assert texts["B01"] == "Title: Nail Lacquer & Top Coat. Brand: OPI. Categories: Makeup, Nails, Nail Polish."
    assert texts["B02"] == "Title: L'Oreal Mascara. Categories: Makeup, Eyes."        # null brand
    assert texts["B03"] == "Brand: Burt's Bees."                                       # empty title, no categories
    assert "&#" not in " ".join(texts.values()) and "None" not in " ".join(texts.values())
    # a table without brand: the template names only what the table has
    no_brand = load_item_jsonl(_jsonl(tmp_path / "nb.jsonl", [{"item_id": "a", "title": "T"}]))
    assert no_brand.template == "Title: {title}." and item_texts(no_brand) == ["Title: T."]


def test_items_must_cover_the_sequences(tmp_path):
    seq = _write(tmp_path / "user_sequence.txt", "u1 B01 B02 B03\nu2 B04 B01 B05\n")
    items = _jsonl(tmp_path / "items.jsonl", ITEMS)
    with pytest.raises(DataError, match=r"1 item\(s\) of the sequences have no row in the item table "
                                        r".*items.jsonl, e.g. \['B05'\]") as e:
        load_sequences(seq, items)
    assert "null fields are fine" in e.value.fix
    # S3-Rec integer ids against an ASIN table: nothing matches, and the error says why
    ints = _write(tmp_path / "Beauty.txt", "1 1 2\n2 2 3\n")
    with pytest.raises(DataError, match="no item of the sequences is in the item table") as e:
        load_sequences(ints, items)
    assert "integer ids" in e.value.fix
    # covered: the table keeps only the sequences' items (B99 goes), in file order
    _write(seq, "u1 B01 B02 B03\nu2 B04 B01 B02\n")
    ds = load_sequences(seq, items)
    assert list(ds.items.items) == ["B01", "B02", "B03", "B04"]
    # a folder with user_sequence.txt finds items.jsonl next to it; so does load_dataset
    for d in (load_sequences(tmp_path), load_dataset(tmp_path),
              load_dataset(seq, items=items), load_dataset(seq, format="sequences", items=items)):
        assert list(d.items.items) == ["B01", "B02", "B03", "B04"] and len(d.interactions) == 6
    assert load_dataset(seq).items is None
    with pytest.raises(DataError, match=r"\['columns'\] do not apply to it"):
        load_dataset(seq, format="sequences", columns={"user_id": "u"})
    with pytest.raises(DataError, match="unknown data format 'seq'"):
        load_dataset(seq, format="seq")


def test_famae_fields_of_a_product_table(tmp_path):
    from sidkit.embed.famae import build_field_tables, default_fields

    items = load_item_jsonl(_jsonl(tmp_path / "items.jsonl", ITEMS))
    specs = default_fields(items)                           # Amazon defaults: path levels
    assert [(s.name, s.kind) for s in specs] == [("item_id", "categorical"), ("brand", "categorical"),
                                                 ("cat1", "categorical"), ("cat2", "categorical"),
                                                 ("cat3", "categorical")]
    t = build_field_tables(items, specs)
    brand = dict(zip(items.items, t.codes[1][:, 0]))
    assert brand["B02"] == 0 and brand["B04"] == 0 and brand["B01"] > 0   # missing brand: code 0
    assert t.vocabs[2] == ["Hair Care", "Makeup"]
    # categories as a set: a multi-valued field
    specs = default_fields(items, names=["item_id", "brand", "categories"])
    assert specs[2].kind == "multi"
    t = build_field_tables(items, specs)
    assert t.codes[2].shape == (5, 4) and (t.codes[2][2] == [0, -1, -1, -1]).all()   # no categories
    # without derived levels, the defaults keep the categories (as a set), never drop them
    flat = load_item_jsonl(tmp_path / "items.jsonl", category_levels=0)
    assert [(s.name, s.kind) for s in default_fields(flat)][-1] == ("categories", "multi")


# ------------------------------------------------------------------ the config path
def test_run_config_reads_sequences_and_jsonl(tmp_path):
    from sidkit.config import config_from_dict
    from sidkit.data import Split
    from sidkit.pipeline import _data_stage, run_pipeline

    lines = [f"u{u} " + " ".join(f"B0{(u + k) % 4 + 1}" for k in range(5)) for u in range(6)]
    (tmp_path / "data").mkdir()
    seq = _write(tmp_path / "data" / "seq.txt", "\n".join(lines) + "\n")
    items = _jsonl(tmp_path / "data" / "items.jsonl.gz", ITEMS)
    cfg = config_from_dict({"data": {"dataset": str(seq), "items": str(items)}})
    run_pipeline(cfg, tmp_path / "run", stop_before="embeddings")
    split = Split.load(tmp_path / "run" / "split")
    assert len(split.test) == 6 and len(split.valid) == 6
    texts = json.loads((tmp_path / "run" / "items" / "texts.json").read_text())
    assert texts["item_ids"] == ["B01", "B02", "B03", "B04"]                 # B99 is not in the sequences
    assert texts["texts"][1] == "Title: L'Oreal Mascara. Categories: Makeup, Eyes."
    # format: absent from the fingerprint unless set (existing runs stay cached)
    assert "format" not in _data_stage(cfg).params
    explicit = config_from_dict({"data": {"dataset": str(seq), "items": str(items), "format": "sequences"}})
    assert _data_stage(explicit).params["format"] == "sequences"
    # a temporal split has no timestamps to cut at
    bad = config_from_dict({"data": {"dataset": str(seq), "split": "temporal"}})
    with pytest.raises(DataError, match="split = \"temporal\" cuts at global timestamps"):
        run_pipeline(bad, tmp_path / "run2", stop_before="embeddings")


# ------------------------------------------------------- the shared Beauty file (slice)
@pytest.mark.skipif(not BEAUTY.is_dir(), reason="../shared/data/amazon-beauty is not here")
def test_beauty_slice(tmp_path):
    with gzip.open(BEAUTY / "user_sequence.txt.gz", "rt", encoding="utf-8") as f:
        head = [next(f) for _ in range(300)]
    _write(tmp_path / "user_sequence.txt.gz", "".join(head))
    ds = load_sequences(tmp_path / "user_sequence.txt.gz", BEAUTY / "items.jsonl.gz")
    inter = ds.interactions
    n_tokens = sum(len(line.split()) - 1 for line in head)
    assert inter.n_users == 300 and len(inter) == n_tokens == 4161 and inter.n_items == 2795
    assert ds.items is not None and len(ds.items) == inter.n_items
    assert ds.items.categorical_fields == ["brand", "cat1", "cat2", "cat3"]
    texts = item_texts(ds.items)
    assert not any("&#" in t or "&amp;" in t for t in texts) and all(texts)
    split = leave_one_out(inter)
    assert len(split.test) == len(split.valid) == 300 and len(split.train) == n_tokens - 600
    first = head[0].split()
    assert split.examples("test").set_index("user_id").loc[first[0], "target"] == first[-1]
    assert split.examples("valid").set_index("user_id").loc[first[0], "history"] == first[1:-2]
