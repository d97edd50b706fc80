"""Issue 11 study 5: the Amazon grid (configs/experiments/amazon.toml), its published
reference rows, and the synthetic Amazon 2014 5-core fixture that keeps the path tested."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_train_cli import TINY_CAUSAL, TINY_TRAIN
from typer.testing import CliRunner

from sidkit.cli import app
from sidkit.config import read_toml
from sidkit.data import load_dataset
from sidkit.errors import ConfigError, DataError
from sidkit.grid import (Grid, ReferenceRow, load_grid, parse_grid, run_experiment, validate_grid,
                               with_references)

ROOT = Path(__file__).resolve().parents[1]
GRID = ROOT / "configs" / "experiments" / "amazon.toml"
FIX = ROOT / "tests" / "fixtures" / "data" / "amazon"
SPEC7 = {  # TIGER's Table 1 and SPEC 7, as the grid file must carry them (configs/published/amazon_2014.toml)
    "beauty": [("TIGER", {"recall@5": 0.0454, "ndcg@5": 0.0321, "recall@10": 0.0648, "ndcg@10": 0.0384}),
               ("SASRec", {"recall@5": 0.0387, "ndcg@5": 0.0249, "recall@10": 0.0605, "ndcg@10": 0.0318}),
               ("S3-Rec", {"recall@5": 0.0387, "ndcg@5": 0.0244, "recall@10": 0.0647, "ndcg@10": 0.0327}),
               ("SASRec", {"recall@10": 0.074, "ndcg@10": 0.042}),
               ("T5 on RQ-KMeans 3x256", {"ndcg@10": 0.018})],
    "sports": [("TIGER", {"recall@10": 0.0400, "ndcg@10": 0.0225})],
    "toys": [("TIGER", {"recall@10": 0.0712, "ndcg@10": 0.0432})],
}
runner = CliRunner()


def _fixture_module():
    spec = importlib.util.spec_from_file_location("make_fixture", FIX / "make_fixture.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ fixture
def test_fixture_is_what_the_script_writes_and_an_amazon_5core():
    files = _fixture_module().build()
    assert sorted(files) == ["meta_Fixture.json.gz", "reviews_Fixture_5.json.gz"]
    for name, data in files.items():      # byte-identical: regenerating changes nothing
        assert (FIX / name).read_bytes() == data, f"{name}: run tests/fixtures/data/amazon/make_fixture.py"
    assert sum(len(b) for b in files.values()) < 100_000
    ds = load_dataset(FIX / "reviews_Fixture_5.json.gz")       # the meta file is found beside it
    df = ds.interactions.df
    assert (df["user_id"].nunique(), df["item_id"].nunique()) == (150, 80)
    assert df.groupby("user_id").size().min() >= 5 and df.groupby("item_id").size().min() >= 5
    items = ds.items.df.set_index("item_id")
    assert len(items) == 80 and ds.items.categorical_fields == ["brand", "cat1", "cat2", "cat3"]
    assert (items["cat1"].nunique(), items["cat2"].nunique(), items["cat3"].nunique()) == (2, 4, 8)
    assert items["brand"].nunique() == 12 and items["brand"].isna().sum() == 10   # some items lack a brand
    assert np.isnan(items["price"]).sum() == 11
    assert not items["title"].str.contains("&amp;").any()                          # HTML entities decoded
    assert items["title"].str.contains("Burt's Bees").any()                        # python-literal quoting


# --------------------------------------------------------------- grid file
def test_amazon_grid_file_is_the_study(tmp_path):
    grid = load_grid(GRID, out=tmp_path / "out")
    validate_grid(grid)
    assert not (tmp_path / "out").exists()
    assert len(grid.cells) == 18
    assert [(c.dataset, c.embedding, c.tokenizer) for c in grid.cells[:3]] == \
        [("beauty", "text", t) for t in ("rqkmeans", "rqvae", "gaoq")]
    assert {c.dataset for c in grid.cells} == {"beauty", "sports", "toys"}
    assert {c.cfg.embed.method for c in grid.cells} == {"text", "famae"}
    assert {c.cfg.data.dataset for c in grid.cells} == {
        "data/amazon/reviews_Beauty_5.json.gz", "data/amazon/reviews_Sports_and_Outdoors_5.json.gz",
        "data/amazon/reviews_Toys_and_Games_5.json.gz"}
    cell = grid.cells[0]
    assert cell.model_labels == ["popularity", "sasrec", "causal_sid"]
    assert cell.cfg.train.seeds == [0, 1, 2]
    # the published figures of SPEC 7, exactly
    assert {ds: [(r.model, r.metrics) for r in refs] for ds, refs in grid.references.items()} == SPEC7


def test_missing_data_files_are_one_clear_error_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "amazon").mkdir(parents=True)
    shutil.copy(FIX / "reviews_Fixture_5.json.gz", tmp_path / "data" / "amazon" / "reviews_Beauty_5.json.gz")
    with pytest.raises(DataError, match="sports = 'data/amazon/reviews_Sports_and_Outdoors_5.json.gz', "
                                        "toys = 'data/amazon/reviews_Toys_and_Games_5.json.gz'") as e:
        run_experiment(GRID, out=tmp_path / "out")
    assert "beauty" not in e.value.problem and "docs/studies/amazon.md" in e.value.fix
    assert not (tmp_path / "out").exists()
    res = runner.invoke(app, ["experiment", str(GRID), "--out", str(tmp_path / "out"), "--dry-run"])
    assert res.exit_code != 0 and "not found" in res.output and "sports" in res.output
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------- reference tables
def _bad_doc(ref) -> dict:
    return {"name": "bad", "grid": {"datasets": [{"label": "beauty", "dataset": "ml-100k", "reference": ref}]}}


@pytest.mark.parametrize("ref, message", [
    ([{"model": "TIGER", "source": "paper", "metrics": {"ndcg@10": 0.0384}, "tabel": 1}], "unknown key 'reference.0.tabel'"),
    ([{"model": "TIGER", "source": "paper", "metrics": {"hr@10": 0.06}}], r"unknown metric\(s\) \['hr@10'\]"),
    ([{"model": "TIGER", "source": "paper", "metrics": {"ndcg@50": 0.06}}], r"unknown metric\(s\) \['ndcg@50'\]"),
    ([{"model": "TIGER", "source": "paper", "metrics": {"ndcg@10": 3.84}}], r"fractions in \[0, 1\]"),
    ([{"model": "TIGER", "source": "paper", "metrics": {}}], "at least one metric"),
    ([{"model": "TIGER", "metrics": {"ndcg@10": 0.03}}], "'reference.0.source': Field required"),
    ({"model": "TIGER"}, "'reference': Input should be a valid list"),
])
def test_bad_reference_tables_are_clear_errors(ref, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_grid(_bad_doc(ref), "grid.toml")
    assert "[[grid.datasets]] 'beauty'" in e.value.problem and "docs/experiments.md" in e.value.fix


def test_bad_reference_in_a_grid_file_leaves_no_output(tmp_path):
    text = GRID.read_text().replace(
        'references = "../published/amazon_2014.toml:sports"',
        '[[grid.datasets.reference]]\nmodel = "TIGER"\nsource = "paper"\nmetrics = { "hit@10" = 0.0400 }', 1
    ).replace("../published/", f"{GRID.parent.parent / 'published'}/")     # the copy lives elsewhere
    assert text != GRID.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    out = tmp_path / "out"
    res = runner.invoke(app, ["experiment", str(bad), "--out", str(out)])
    assert res.exit_code != 0
    assert "[[grid.datasets]] 'sports'" in res.output and "['hit@10']" in res.output
    assert not out.exists()


def test_reference_rows_follow_their_data_set_rows():
    refs = {"a": [ReferenceRow(model="P", source="s1", metrics={"ndcg@10": 0.5, "recall@5": 0.25})],
            "c": [ReferenceRow(model="Q", source="s2", metrics={"ndcg@10": 0.125})]}
    grid = Grid(None, "t", Path("out"), [], refs)
    rows = [{"dataset": d, "model": m} for d, m in (("a", "x"), ("a", "y"), ("b", "x"))]
    out = with_references(grid, rows)
    assert [(r["dataset"], r["model"], r.get("reference")) for r in out] == \
        [("a", "x", None), ("a", "y", None), ("a", "P", "s1"), ("b", "x", None)]   # c: no rows of its own
    assert out[2]["test_ndcg@10_mean"] == 0.5 and out[2]["test_recall@5_mean"] == 0.25
    assert out[2]["test_ndcg@10_std"] is None and out[2]["embedding"] == out[2]["tokenizer"] == ""
    assert with_references(grid, []) == []


# ----------------------------------------------------- end to end (fixture)
def test_amazon_grid_runs_on_the_fixture_with_reference_rows(tmp_path, monkeypatch, sidkit_home):
    """The shipped grid, with the fixture put where it expects Beauty, one data set, tiny
    models and FAMAE, 2 tokenizers: our rows and the published rows in one table."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data" / "amazon"
    data.mkdir(parents=True)
    shutil.copy(FIX / "reviews_Fixture_5.json.gz", data / "reviews_Beauty_5.json.gz")
    shutil.copy(FIX / "meta_Fixture.json.gz", data / "meta_Beauty.json.gz")
    doc = read_toml(GRID, "grid", "")
    g = doc["grid"]
    g["datasets"] = [d for d in g["datasets"] if d["label"] == "beauty"]      # keeps its reference table
    g["embeddings"][1]["famae"] = {"epochs": 1, "dim": 8, "n_layers": 1, "n_heads": 1, "ffn": 16}
    g["tokenizers"] = [{"method": "rqkmeans"}, {"method": "gaoq"}]
    g["models"] = [{"type": "popularity"}, dict(TINY_CAUSAL)]
    g["seeds"] = [0, 1]
    doc["base"]["train"] = dict(TINY_TRAIN)
    doc["base"]["diagnostics"] = {"perturbation_scales": [0.1], "report": False}
    out = tmp_path / "exp"
    res = run_experiment(parse_grid(doc, str(GRID), out))
    assert [c.id for c in res.grid.cells] == [f"beauty__{e}__{t}" for e in ("text", "famae")
                                              for t in ("rqkmeans", "gaoq")]
    rows = _rows(out / "results.csv")
    ours, refs = rows[:5], rows[5:]
    # share_id_models: popularity reads no SIDs, so it is trained once (in the first run)
    # and listed once, ahead of the SID rows
    assert [(r["embedding"], r["tokenizer"], r["model"]) for r in ours] == \
        [("", "", "popularity")] + [(e, t, "causal_sid") for e in ("text", "famae") for t in ("rqkmeans", "gaoq")]
    assert ours[0]["run"] == "runs/beauty__text__rqkmeans"
    assert all(r["dataset"] == "beauty" and r["reference"] == "" and r["seeds"] == "0 1" for r in ours)
    for r in ours:      # our rows: the runs' own metrics
        metrics = json.loads((out / r["run"] / "recommender" / "metrics.json").read_text())
        vals = [m["test"]["ndcg@10"] for m in metrics["records"] if m["label"] == r["model"]]
        assert float(r["test_ndcg@10_mean"]) == np.mean(vals) and r["n_items"] == "80"
    assert float(ours[0]["test_ndcg@10_mean"]) > 0      # popularity finds some test items
    # the published rows, after the data set's rows, with exactly the grid's figures
    assert [(r["dataset"], r["model"], r["embedding"], r["run"]) for r in refs] == \
        [("beauty", m, "", "") for m, _ in SPEC7["beauty"]]
    for r, (_, figures) in zip(refs, SPEC7["beauty"]):
        assert r["reference"].startswith(("Rajput et al. 2023", "SPEC 7", "seed 003"))
        assert {c[5:-5] for c, v in r.items() if c.startswith("test_") and c.endswith("_mean") and v} == set(figures)
        assert all(float(r[f"test_{m}_mean"]) == v and r[f"test_{m}_std"] == "" for m, v in figures.items())
    md = (out / "results.md").read_text()
    assert "| beauty |  |  | TIGER (published) |  | 0.0454 | 0.0648 | 0.0321 | 0.0384 |" in md
    assert "| beauty |  |  | SASRec (published) |  |  | 0.0740 |  | 0.0420 |" in md
    assert "| beauty |  |  | S3-Rec (published) |  | 0.0387 | 0.0647 | 0.0244 | 0.0327 |" in md
    assert "4 of 4 run(s) finished (1 data set(s) x 2 embedding(s) x 2 tokenizer(s)), seeds 0, 1; 5 row(s)" in md
    assert "- beauty, TIGER: Rajput et al. 2023, TIGER (NeurIPS), Table 1 -- Sentence-T5" in md
    doc_json = json.loads((out / "results.json").read_text())
    assert [r["model"] for r in doc_json["rows"][5:]] == [m for m, _ in SPEC7["beauty"]]
    assert doc_json["references"]["beauty"][0]["metrics"] == SPEC7["beauty"][0][1]
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    # FAMAE had the Amazon fields
    famae_meta = json.loads((out / "runs" / "beauty__famae__gaoq" / "embeddings" / "meta.json").read_text())
    assert "brand" in json.dumps(famae_meta) and "cat3" in json.dumps(famae_meta)


def test_a_known_but_unfetchable_name_says_where_to_get_the_files(tmp_path):
    grid = parse_grid({"name": "n", "grid": {"datasets": [{"dataset": "amazon-beauty"}]}}, "g.toml",
                      out=tmp_path / "out")
    with pytest.raises(DataError, match="amazon-beauty = 'amazon-beauty'") as e:
        run_experiment(grid)
    assert "reviews_Beauty_5.json.gz + meta_Beauty.json.gz" in e.value.fix
    assert not (tmp_path / "out").exists()


def test_published_rows_are_read_from_one_file():
    """The grid's reference rows are the published-results file's tables, not a retyped copy."""
    import tomllib

    published = tomllib.loads((GRID.parent.parent / "published" / "amazon_2014.toml").read_text())
    grid = load_grid(GRID)
    for label, tables in (("beauty", ("beauty", "beauty_spec")), ("sports", ("sports",)), ("toys", ("toys",))):
        rows = [r for t in tables for r in published[t]]
        assert [(r.model, r.metrics, r.source) for r in grid.references[label]] == \
            [(r["model"], r["metrics"], r["source"]) for r in rows]
    assert "0.0384" not in GRID.read_text()                  # no figure retyped in the grid file
    with pytest.raises(ConfigError, match="has no table \\[\\[nope\\]\\]"):
        parse_grid({"name": "x", "grid": {"datasets": [{"label": "b", "dataset": "ml-100k",
                                                        "references": "../published/amazon_2014.toml:nope"}]}},
                   str(GRID))
