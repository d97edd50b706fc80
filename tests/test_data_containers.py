"""Containers save/load, dataset_info and item text templates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sidkit.data import (Dataset, Interactions, ItemTable, Split, dataset_info, format_info, item_texts,
                         leave_one_out, load_dataset, temporal_split)
from sidkit.errors import ArtifactError, DataError

FIX = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture
def ds():
    return load_dataset(FIX / "grouplens100k")


def test_interactions_round_trip(ds, tmp_path):
    inter = ds.interactions
    inter.save(tmp_path)
    meta = json.loads((tmp_path / "interactions.json").read_text())
    assert meta["artifact"] == "Interactions" and meta["n_rows"] == len(inter) and meta["schema_version"] >= 1
    assert meta["source"].endswith("u.data")
    back = Interactions.load(tmp_path)
    pd.testing.assert_frame_equal(back.df, inter.df)
    assert back.name == inter.name and back.time_unit == "s"
    assert list(back.items) == list(inter.items)
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave nothing behind


def test_item_table_round_trip(ds, tmp_path):
    items = ds.items
    items.save(tmp_path)
    back = ItemTable.load(tmp_path)
    assert back.text_fields == items.text_fields and back.categorical_fields == items.categorical_fields
    assert back.template == items.template
    assert back.df["genres"].tolist() == items.df["genres"].tolist()
    assert all(isinstance(g, list) for g in back.df["genres"])
    assert back.df["year"].tolist()[:3] == [1995, 1995, 1995] and pd.isna(back.df["year"].iloc[3])
    assert item_texts(back) == item_texts(items)


def test_split_round_trip(ds, tmp_path):
    for split in (leave_one_out(ds.interactions), temporal_split(ds.interactions, 0.3, 0.0)):
        split.save(tmp_path / split.kind)
        back = Split.load(tmp_path / split.kind)
        pd.testing.assert_frame_equal(back.df, split.df)
        assert back.kind == split.kind and back.params == split.params
        meta = json.loads((tmp_path / split.kind / "split.json").read_text())
        assert sum(meta["counts"].values()) == len(split)


def test_dataset_round_trip_and_bad_artifacts(ds, tmp_path):
    ds.save(tmp_path)
    back = Dataset.load(tmp_path)
    assert len(back.items) == len(ds.items) and len(back.interactions) == len(ds.interactions)
    with pytest.raises(ArtifactError, match="no Split artifact"):
        Split.load(tmp_path)
    (tmp_path / "items.json").write_text(json.dumps({"artifact": "ItemTable", "schema_version": 999}))
    with pytest.raises(ArtifactError, match="schema version"):
        ItemTable.load(tmp_path)


def test_item_table_validation():
    with pytest.raises(DataError, match="duplicated item ids"):
        ItemTable(pd.DataFrame({"item_id": ["a", "a"]}))
    with pytest.raises(DataError, match=r"text field\(s\) \['title'\].*columns found"):
        ItemTable(pd.DataFrame({"item_id": ["a"], "name": ["x"]}), text_fields=["title"])
    t = ItemTable(pd.DataFrame({"item_id": ["a", "b"], "title": ["A", "B"]}), text_fields=["title"])
    sub = t.subset(["b", "zz"])
    assert sub.df["item_id"].tolist() == ["b", "zz"] and item_texts(sub) == ["Title: B.", ""]


def test_dataset_info(ds):
    info = dataset_info(ds.interactions)
    assert (info["users"], info["items"], info["interactions"]) == (4, 5, 11)
    assert info["density"] == pytest.approx(11 / 20)
    assert (info["seq_len_min"], info["seq_len_median"], info["seq_len_max"]) == (1, 3.0, 4)
    assert info["seq_len_p90"] == pytest.approx(np.quantile([4, 3, 3, 1], 0.9))
    text = format_info(info)
    assert "users" in text and "55.0000%" in text and "1 / 3 / 3.7 / 4" in text


def test_text_templates():
    df = pd.DataFrame({
        "item_id": ["1", "2", "3"],
        "title": ["Red Lipstick", None, "Comb"],
        "brand": ["Acme", float("nan"), ""],
        "categories": [["Beauty", "Makeup"], [], None],
        "price": [9.99, 5.0, float("nan")],
    })
    items = ItemTable(df, text_fields=["title", "brand", "categories", "price"],
                      template="Title: {title}. Brand: {brand}. Categories: {categories}. Price: {price}.")
    texts = item_texts(items)
    assert texts == ["Title: Red Lipstick. Brand: Acme. Categories: Beauty, Makeup. Price: 9.99.",
                     "Price: 5.", "Title: Comb."]
    assert all("nan" not in t.lower() and "None" not in t for t in texts)
    assert item_texts(items, "{title} (${price:.2f})") == ["Red Lipstick ($9.99)", "($5.00)", "Comb"]
    with pytest.raises(DataError) as e:
        item_texts(items, "Title: {title}. Colour: {colour}.")
    assert "'colour'" in str(e.value) and "available fields" in str(e.value) and "brand" in str(e.value)
    with pytest.raises(DataError, match="positional"):
        item_texts(items, "{}")
    with pytest.raises(DataError, match="bad text template"):
        item_texts(items, "{title")
    # no template on the table: one "Field: value." per text field
    items.template = None
    assert item_texts(items)[0].startswith("Title: Red Lipstick. Brand: Acme.")
