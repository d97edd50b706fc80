"""`sidkit add-items RUN ITEMS` and :mod:`sidkit.catalogue`: new items join a saved run's
SID models, persisted atomically in RUN/catalogue, surviving reloads (issue 25)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from sidkit.catalogue import add_items_to_run, current_additions, load_run_model, run_tokenizer, sid_models
from sidkit.errors import DataError

N_ITEMS = 48
GENRES = ("Drama", "Comedy", "Horror")
CAUSAL = {"type": "causal_sid", "hidden": 16, "n_layers": 1, "n_heads": 1, "max_len": 6, "dropout": 0.0, "beam": 5}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    from sidkit.config import config_from_dict
    from sidkit.pipeline import run_pipeline

    tmp = tmp_path_factory.mktemp("addrun")
    rng = np.random.default_rng(0)
    d = tmp / "toy"
    d.mkdir(parents=True)
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(40):
        start = rng.integers(N_ITEMS)
        rows += [f"u{u}\ti{(start + 3 * t) % N_ITEMS}\t4\t{1000 + 10 * t + u}" for t in range(12)]
    (d / "toy.inter").write_text("\n".join(rows) + "\n")
    items = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    items += [f"i{i}\tMovie number {i}\t{1990 + i % 10}\t{GENRES[i % 3]}" for i in range(N_ITEMS)]
    (d / "toy.item").write_text("\n".join(items) + "\n")
    cfg = config_from_dict({
        "data": {"dataset": str(d), "user_core": 2}, "device": "cpu",
        "codes": {"codebook_sizes": [3, 4], "n_levels": 2},
        "diagnostics": {"perturbation_scales": [0.1], "report": False},
        "models": [{"type": "popularity"}, CAUSAL],
        "train": {"epochs": 1, "batch_size": 32, "warmup_steps": 1}})
    run_pipeline(cfg, tmp / "run")
    return tmp / "run"


@pytest.fixture
def run(base_run, tmp_path):
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


def _emb(run, n, seed=0):
    d = run_tokenizer(run)
    from sidkit.catalogue import embedding_dim

    return np.random.default_rng(seed).normal(size=(n, embedding_dim(d))).astype(np.float32)


def _snapshot(run):
    return sorted((p.relative_to(run).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in run.rglob("*") if p.is_file())


def _only_item_left(model, item):
    """Top-1 of a history when every other item is excluded: the item is decodable."""
    ex = np.ones((1, model.n_items), bool)
    i = int(np.searchsorted(model.item_ids_, item))
    ex[0, i] = False
    return str(model.item_ids_[model.recommend(np.array([[1, 2, 3]]), 1, exclude=ex)[0, 0]])


def test_add_with_embeddings_persists_and_survives_reload(run):
    (label, seed, _), = sid_models(run)
    before = load_run_model(run, label, seed)
    out = add_items_to_run(run, ["new1", "new2"], embeddings=_emb(run, 2))
    assert out["added"] == 2 and out["version"] == "v-000001"
    m = load_run_model(run, label, seed)                     # a fresh load = a restart
    assert m.n_items == before.n_items + 2
    assert {"new1", "new2"} <= set(m.item_ids_.tolist())
    assert _only_item_left(m, "new1") == "new1"
    sids = out["models"][f"{label}/seed-{seed}"]
    from sidkit.models.catalogue import sids_dict

    assert sids_dict(m, ["new1", "new2"]) == sids
    # the stage directories are untouched: sidkit run's cache stays valid
    from sidkit.stages import read_meta, verify_outputs

    for stage in ("codes", "recommender"):
        assert verify_outputs(run / stage, read_meta(run / stage)) is None
    # a second batch accumulates; the tokenizer remembers the first batch
    out2 = add_items_to_run(run, ["new3"], embeddings=_emb(run, 1, seed=1))
    assert out2["version"] == "v-000002" and out2["total_added"] == 3
    assert sorted(p.name for p in (run / "catalogue").iterdir()) == ["CURRENT", "v-000002"]
    m2 = load_run_model(run, label, seed)
    assert m2.n_items == before.n_items + 3
    assert sids_dict(m2, ["new1", "new2"]) == sids          # earlier additions keep their SIDs
    tok = run_tokenizer(run)
    again = tok.encode(current_additions(run).embeddings[:2])
    assert np.array_equal(again.codes, current_additions(run).codes[:2])


def test_add_with_text_uses_the_runs_text_model(run):
    out = add_items_to_run(run, ["t1"], texts=["Title: A brand new horror film. Year: 2031. Genres: Horror."])
    assert out["added"] == 1
    add = current_additions(run)
    assert add.texts == ["Title: A brand new horror film. Year: 2031. Genres: Horror."]
    assert add.embeddings.shape[1] == (run_tokenizer(run).n_features_in_ if hasattr(run_tokenizer(run),
                                                                                   "n_features_in_") else 384)


@pytest.mark.parametrize("ids, kw, match", [
    (["n1", "n1"], {}, "twice"),
    (["i1"], {}, "already in the model's catalogue"),
    (["n\t1"], {}, "control character U\\+0009"),
    ([], {}, "empty"),
    (["n1"], {"wrong_width": True}, "dimensions"),
    (["n1"], {"nan": True}, "NaN"),
    (["n1"], {"texts": [" "]}, "empty"),
    (["n1", "n2", "n3"], {"max_items": 2}, "at most 2"),
])
def test_bad_input_is_one_error_and_writes_nothing(run, ids, kw, match):
    add_items_to_run(run, ["ok1"], embeddings=_emb(run, 1))
    snap = _snapshot(run)
    X = _emb(run, max(len(ids), 1))[:len(ids)]
    if kw.pop("wrong_width", False):
        X = X[:, :3]
    if kw.pop("nan", False):
        X[0, 1] = np.nan
    if "texts" in kw:
        kwargs = {"texts": kw["texts"]}
    else:
        kwargs = {"embeddings": X, **kw}
    with pytest.raises(DataError, match=match):
        add_items_to_run(run, ids, **kwargs)
    assert _snapshot(run) == snap
    with pytest.raises(DataError, match="already in"):
        add_items_to_run(run, ["ok1"], embeddings=_emb(run, 1))


def test_crash_during_the_write_leaves_the_previous_catalogue(run, monkeypatch):
    import sidkit.catalogue as cat

    (label, seed, _), = sid_models(run)
    add_items_to_run(run, ["a1"], embeddings=_emb(run, 1))
    ids_before = load_run_model(run, label, seed).item_ids_.tolist()

    def crash(*a, **k):
        raise KeyboardInterrupt("killed")

    # a crash while writing the new version's files, and one just before the commit
    for target in ("write_json", "write_text"):
        with monkeypatch.context() as mp:
            mp.setattr(cat, target, crash)
            with pytest.raises(KeyboardInterrupt):
                add_items_to_run(run, ["b1"], embeddings=_emb(run, 1, seed=3))
        assert (run / "catalogue" / "CURRENT").read_text().strip() == "v-000001"
        assert load_run_model(run, label, seed).item_ids_.tolist() == ids_before
    # a version directory written but never committed (killed before CURRENT): ignored, cleaned next time
    assert current_additions(run).item_ids == ["a1"]
    out = add_items_to_run(run, ["b1"], embeddings=_emb(run, 1, seed=3))
    assert out["total_added"] == 2
    assert sorted(p.name for p in (run / "catalogue").iterdir()) == ["CURRENT", out["version"]]


def test_cli_add_items_csv_with_text_and_npy(run, tmp_path):
    from sidkit.cli import app

    runner = CliRunner()
    csv = tmp_path / "new.csv"
    csv.write_text("item_id,title,year,genres\nc1,A film nobody made,2031,Western\n")
    res = runner.invoke(app, ["add-items", str(run), str(csv)])
    assert res.exit_code == 0, res.output
    assert "added 1 item(s)" in res.output
    (label, seed, _), = sid_models(run)
    m = load_run_model(run, label, seed)
    assert "c1" in m.item_ids_.tolist() and _only_item_left(m, "c1") == "c1"
    assert current_additions(run).texts[0].startswith("Title: A film nobody made")
    # ids + an .npy of embeddings, JSONL
    jl = tmp_path / "new.jsonl"
    jl.write_text(json.dumps({"item_id": "e1"}) + "\n" + json.dumps({"item_id": "e2"}) + "\n")
    np.save(tmp_path / "x.npy", _emb(run, 2))
    res = runner.invoke(app, ["add-items", str(run), str(jl), "--embeddings", str(tmp_path / "x.npy"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["total_added"] == 3
    # bad input: exit 1, one message, nothing changed
    snap = _snapshot(run)
    res = runner.invoke(app, ["add-items", str(run), str(jl), "--embeddings", str(tmp_path / "x.npy")])
    assert res.exit_code == 1 and "already in" in res.output
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,text\nz1,\n")
    res = runner.invoke(app, ["add-items", str(run), str(bad)])
    assert res.exit_code == 1 and "empty" in res.output
    assert _snapshot(run) == snap


def test_concurrent_writers_lose_no_update(run):
    """Two writers at once (e.g. two CLI calls): the run's lock serialises them, so the
    final version holds both batches."""
    import threading

    errs = []

    def add(tag, seed):
        try:
            add_items_to_run(run, [f"{tag}{i}" for i in range(2)], embeddings=_emb(run, 2, seed=seed))
        except Exception as e:  # noqa: BLE001
            errs.append(e)

    ts = [threading.Thread(target=add, args=(t, s)) for t, s in (("p", 11), ("q", 12))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs, errs
    assert sorted(current_additions(run).item_ids) == ["p0", "p1", "q0", "q1"]
