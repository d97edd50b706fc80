"""`sidkit experiment`: a grid of runs on the toy data set of test_pipeline, one results table."""

import copy
import csv
import json
import re

import numpy as np
import pytest
from test_pipeline import toy  # noqa: F401  (fixture: 60 items, an embeddings file)
from test_train_cli import TINY_CAUSAL, TINY_TRAIN
from typer.testing import CliRunner

from sidkit.cli import app
from sidkit.errors import ConfigError, DataError
from sidkit.grid import load_grid, parse_grid, run_experiment

runner = CliRunner()
TIMES = ("tokenize_seconds", "train_seconds_mean", "train_seconds_std")


def _doc(toy, tokenizers=({"method": "rqkmeans"}, {"method": "hkm"}), models=(TINY_CAUSAL,),
         seeds=(0, 1), report=False):
    return {"name": "toy-grid",
            "base": {"data": {"dataset": str(toy / "toy"), "user_core": 2},
                     "embed": {"embeddings_file": str(toy / "emb.npy")},
                     "codes": {"codebook_sizes": [3, 4]},
                     "diagnostics": {"perturbation_scales": [0.1, 0.5], "report": report},
                     "train": dict(TINY_TRAIN)},
            "grid": {"tokenizers": [dict(t) for t in tokenizers], "models": [dict(m) for m in models],
                     "seeds": list(seeds)}}


def _toml(toy, out, extra_tokenizer="", hkm_extra="") -> str:
    return f"""
name = "toy-grid"
out = "{out}"

[base]
train = {{ epochs = 1, batch_size = 32, warmup_steps = 1 }}
[base.data]
dataset = "{toy / 'toy'}"
user_core = 2
[base.embed]
embeddings_file = "{toy / 'emb.npy'}"
[base.codes]
codebook_sizes = [3, 4]
[base.diagnostics]
perturbation_scales = [0.1, 0.5]
report = false

[grid]
seeds = [0]

[[grid.tokenizers]]
method = "rqkmeans"

[[grid.tokenizers]]
method = "hkm"
{hkm_extra}
{extra_tokenizer}

[[grid.models]]
type = "popularity"
"""


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _outputs(out):
    return {n: (out / f"results.{n}").read_bytes() for n in ("csv", "md", "json", "png")}


def test_grid_runs_every_cell_writes_the_table_and_reruns_nothing(toy):
    out = toy / "exp"
    statuses = {}
    res = run_experiment(parse_grid(_doc(toy), "test", out),
                         on_stage=lambda cell, r: statuses.setdefault(cell.id, []).append((r.name, r.status)))
    ids = ["toy__file-emb__rqkmeans", "toy__file-emb__hkm"]
    assert [c.id for c in res.grid.cells] == ids
    assert all(s == "ran" for _, s in statuses[ids[0]])
    # the second cell copies the stages that do not depend on the tokenizer
    assert dict(statuses[ids[1]]) == {"data": "cached", "split": "cached", "items": "cached",
                                      "embeddings": "cached", "codes": "ran", "recommender": "ran",
                                      "diagnostics": "ran"}
    a, b = (out / "runs" / i for i in ids)
    for stage in ("data", "split", "items", "embeddings"):
        assert (a / stage / "meta.json").read_bytes() == (b / stage / "meta.json").read_bytes()
    assert (b / "diagnostics" / "report.json").is_file()

    rows = _rows(out / "results.csv")
    assert [(r["dataset"], r["embedding"], r["tokenizer"], r["model"], r["seeds"]) for r in rows] == \
        [("toy", "file-emb", "rqkmeans", "causal_sid", "0 1"), ("toy", "file-emb", "hkm", "causal_sid", "0 1")]
    doc = json.loads((out / "results.json").read_text())
    assert [r["tokenizer"] for r in doc["rows"]] == ["rqkmeans", "hkm"]
    md = (out / "results.md").read_text()
    for row, run in zip(rows, (a, b)):
        # downstream metrics: mean and sample std over the run's per-seed records
        metrics = json.loads((run / "recommender" / "metrics.json").read_text())
        recs = [r for r in metrics["records"] if r["label"] == "causal_sid"]
        assert [r["seed"] for r in recs] == [0, 1]
        for m in ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "mrr@20", "coverage@10"):
            vals = [r["test"][m] for r in recs]
            assert float(row[f"test_{m}_mean"]) == np.mean(vals)
            assert float(row[f"test_{m}_std"]) == np.std(vals, ddof=1)
        v = [r["test"]["ndcg@10"] for r in recs]
        assert f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}" in md
        ts = [r["train_seconds"] for r in recs]
        assert float(row["train_seconds_mean"]) == np.mean(ts)
        # diagnostics: the codes and diagnostics stages of the run
        summary = json.loads((run / "codes" / "summary.json").read_text())
        codes_meta = json.loads((run / "codes" / "meta.json").read_text())
        head = json.loads((run / "diagnostics" / "meta.json").read_text())["summary"]
        sem_levels = summary["levels"][:-1] if summary["collision_rule"] != "none" else summary["levels"]
        assert len(sem_levels) == 2
        for lv in sem_levels:
            assert float(row[f"norm_entropy_l{lv['level']}"]) == lv["norm_entropy"]
        assert float(row["semantic_collision_rate"]) == summary["semantic_collisions"]["rate"]
        assert float(row["semantic_collision_share"]) == summary["semantic_collisions"]["share_in_collision"]
        assert float(row["k_eff"]) == head["sid_k_eff"][0] and float(row["k_eff_scale"]) == 0.1
        assert float(row["rel_mse"]) == head["rel_mse"] > 0
        assert float(row["rel_mse_prefix_mean"]) == head["rel_mse_prefix_mean"] <= head["rel_mse"] * (1 + 1e-6)
        assert float(row["tokenize_seconds"]) == codes_meta["seconds"]
        assert row["codebook_sizes"].startswith("3x4")
    assert rows[0]["k_eff"] != rows[1]["k_eff"]   # two tokenizers, two sets of diagnostics
    # the plot is a real PNG
    png = (out / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    import matplotlib.image as mpimg
    img = mpimg.imread(out / "results.png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0

    before = _outputs(out)
    statuses.clear()
    run_experiment(parse_grid(_doc(toy), "test", out),
                   on_stage=lambda cell, r: statuses.setdefault(cell.id, []).append((r.name, r.status)))
    assert all(s == "cached" for i in ids for _, s in statuses[i])
    assert _outputs(out) == before


def _strip_times(rows):
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def test_an_interrupted_grid_resumes_and_gives_the_table_of_an_uninterrupted_one(toy):
    doc = _doc(toy, tokenizers=({"method": "rqkmeans"}, {"method": "hkm", "label": "hk"}),
               models=({"type": "popularity", "label": "pop"},))

    class Stop(Exception):
        pass

    def stop_after_second_codes(cell, r):
        if cell.tokenizer == "hk" and r.name == "codes":
            raise Stop

    out = toy / "exp"
    with pytest.raises(Stop):
        run_experiment(parse_grid(doc, "test", out), on_stage=stop_after_second_codes)
    # the first cell finished: the table already holds its row
    assert [r["tokenizer"] for r in _rows(out / "results.csv")] == ["rqkmeans"]
    assert not (out / "runs" / "toy__file-emb__hk" / "recommender").exists()
    statuses = {}
    run_experiment(parse_grid(doc, "test", out),
                   on_stage=lambda cell, r: statuses.setdefault(cell.tokenizer, {}).update({r.name: r.status}))
    assert set(statuses["rqkmeans"].values()) == {"cached"}
    assert statuses["hk"] == {"data": "cached", "split": "cached", "items": "cached", "embeddings": "cached",
                              "codes": "cached", "recommender": "ran", "diagnostics": "ran"}
    ref = toy / "ref"
    run_experiment(parse_grid(doc, "test", ref))
    resumed, clean = _rows(out / "results.csv"), _rows(ref / "results.csv")
    assert [(r["tokenizer"], r["model"]) for r in clean] == [("rqkmeans", "pop"), ("hk", "pop")]
    assert _strip_times(resumed) == _strip_times(clean)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(colour="red"), "unknown key 'colour'"),
    (lambda d: d["grid"].update(tokenizer=[{}]), "unknown key 'grid.tokenizer'"),
    (lambda d: d["grid"]["tokenizers"][1].update(n_level=2), "unknown key 'codes.n_level'"),
    (lambda d: d["grid"]["tokenizers"].append({"method": "hkm"}), "two [grid] tokenizers entries share the label 'hkm'"),
    (lambda d: d["grid"].update(models=[{"type": "popularity"}, {"type": "popularity"}]),
     "two [grid] models entries share the label 'popularity'"),
    (lambda d: d["grid"]["tokenizers"][0].update(label="a b"), "label 'a b' is not a valid name"),
    (lambda d: d["base"]["train"].update(seeds=[3]), "seeds are given both"),
    (lambda d: d["grid"].update(datasets=[{"label": "a__b"}], embeddings=[{"label": "c"}, {"label": "b__c"}],
                                tokenizers=[{}]) or d["grid"]["datasets"].append({"label": "a"}),
     "would share the folder 'a__b__c__rqkmeans'"),
])
def test_bad_grids_are_config_errors_before_anything_runs(toy, edit, message):
    doc = _doc(toy)
    edit(doc)
    out = toy / "exp"
    with pytest.raises(ConfigError) as e:
        run_experiment(parse_grid(doc, "grid.toml", out))
    assert message in str(e.value)
    assert not out.exists()


def test_a_bad_tokenizer_parameter_in_the_last_cell_fails_before_the_first_cell_runs(toy):
    doc = _doc(toy)
    doc["grid"]["tokenizers"][1]["params"] = {"no_such_param": 1}
    out = toy / "exp"
    with pytest.raises(DataError, match=r"cell toy__file-emb__hkm: tokenizer 'hkm' has no parameter"):
        run_experiment(parse_grid(doc, "grid.toml", out))
    assert not out.exists()


def test_cli_dry_run_run_and_errors(toy):
    f = toy / "grid.toml"
    f.write_text(_toml(toy, toy / "exp"))
    assert load_grid(f).out == toy / "exp"
    r = runner.invoke(app, ["experiment", str(f), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "[1/2] toy__file-emb__rqkmeans" in r.output and "[2/2] toy__file-emb__hkm" in r.output
    assert "    data, split, items, embeddings, codes, recommender, diagnostics: runs\n" in r.output
    assert "    data, split, items, embeddings: copied from toy__file-emb__rqkmeans, once it ran; " \
           "codes, recommender, diagnostics: runs\n" in r.output
    assert not (toy / "exp").exists()

    out = toy / "other"
    r = runner.invoke(app, ["experiment", str(f), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert re.search(r"\| toy \| file-emb \| hkm \| popularity( \(chosen\))? \| 0 \|", r.output)
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.json", "results.md",
                                                     "results.png", "runs"]
    r = runner.invoke(app, ["experiment", str(f), "--out", str(out), "--dry-run"])
    plan = [ln for ln in r.output.splitlines() if ln.startswith("    ")]
    assert r.exit_code == 0 and len(plan) == 2
    assert plan == ["    data, split, items, embeddings, codes, recommender, diagnostics: cached"] * 2
    # a third tokenizer: the dry run shows the stages it copies from another cell
    f.write_text(_toml(toy, toy / "exp", extra_tokenizer='[[grid.tokenizers]]\nlabel = "rq5"\n'
                                                          'method = "rqkmeans"\ncodebook_sizes = [5, 4]'))
    r = runner.invoke(app, ["experiment", str(f), "--out", str(out), "--dry-run"])
    assert "[3/3] toy__file-emb__rq5" in r.output
    assert "    data, split, items, embeddings: copied from toy__file-emb__rqkmeans; codes, recommender, " \
           "diagnostics: runs\n" in r.output
    assert not (out / "runs" / "toy__file-emb__rq5").exists()

    f.write_text(_toml(toy, toy / "exp", hkm_extra="sizes = [3]"))
    r = runner.invoke(app, ["experiment", str(f), "--out", str(toy / "bad")])
    assert r.exit_code == 1 and "unknown key 'codes.sizes'" in r.output and "fix:" in r.output
    assert not (toy / "bad").exists()
    r = runner.invoke(app, ["experiment", str(toy / "missing.toml")])
    assert r.exit_code == 1 and "does not exist" in r.output


def test_the_study_1_config_names_two_embeddings_five_tokenizers_and_the_default_causal_model():
    from pathlib import Path

    from sidkit.config import default_config

    grid = load_grid(Path(__file__).parents[1] / "configs" / "experiments" / "tokenizers_ml100k.toml")
    toks = ["rqkmeans", "rqvae", "hkm", "gaoq", "drq"]
    assert [(c.embedding, c.tokenizer) for c in grid.cells] == [(e, t) for e in ("text", "famae") for t in toks]
    assert [c.cfg.embed.method for c in grid.cells] == ["text"] * 5 + ["famae"] * 5
    assert {c.dataset for c in grid.cells} == {"ml-100k"}
    causal = [(m, t) for _, m, t in default_config().recommenders() if m.type == "causal_sid"]
    for cell in grid.cells:
        [(label, model, train)] = cell.cfg.recommenders()
        assert label == "causal_sid" and (model, train.model_copy(update={"seeds": []})) == causal[0]
        assert train.seeds == [0, 1, 2]
        assert cell.cfg.codes.codebook_sizes == ([] if cell.tokenizer == "gaoq" else [24, 24, 24])


def test_a_grid_killed_during_training_resumes_from_the_epoch_checkpoint(toy, monkeypatch):
    from sidkit.training import loop as train_mod

    doc = _doc(toy, tokenizers=({"method": "rqkmeans"},), seeds=(0,))
    doc["base"]["train"]["epochs"] = 2
    real, calls = train_mod.save_checkpoint, []

    class Crash(Exception):
        pass

    def crash_after_first_epoch(path, **kw):
        real(path, **kw)
        calls.append(kw["state"]["epoch"])
        if calls == [1]:
            raise Crash

    monkeypatch.setattr(train_mod, "save_checkpoint", crash_after_first_epoch)
    out = toy / "exp"
    with pytest.raises(Crash):
        run_experiment(parse_grid(doc, "test", out))
    run = out / "runs" / "toy__file-emb__rqkmeans"
    assert (run / "checkpoints" / "recommender" / "causal_sid" / "seed-0" / "state.json").is_file()
    assert not (run / "recommender").exists() and not (out / "results.csv").exists()
    run_experiment(parse_grid(doc, "test", out))
    assert calls == [1, 2]                      # epoch 2 only: resumed, not restarted
    metrics = json.loads((run / "recommender" / "metrics.json").read_text())
    assert metrics["records"][0]["epochs_run"] == 2
    assert [r["model"] for r in _rows(out / "results.csv")] == ["causal_sid"]


def test_a_grid_without_models_gives_a_diagnostics_row_per_run(toy):
    doc = _doc(toy, tokenizers=({"method": "rqkmeans"},), models=(), seeds=())
    out = toy / "exp"
    run_experiment(parse_grid(doc, "test", out))
    [row] = _rows(out / "results.csv")
    run = out / "runs" / "toy__file-emb__rqkmeans"
    head = json.loads((run / "diagnostics" / "meta.json").read_text())["summary"]
    assert row["model"] == "" and row["seeds"] == "" and float(row["k_eff"]) == head["sid_k_eff"][0]
    assert not (run / "recommender").exists() and not any(c.startswith("test_") for c in row)
    md = (out / "results.md").read_text()
    assert f"| toy | file-emb | rqkmeans | {head['sid_k_eff'][0]:.1f} |" in md and "ndcg@10" not in md.split("|---")[0]
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_famae_embeddings_are_trained_once_and_shared_by_the_tokenizers(toy):
    tiny = {"epochs": 1, "dim": 8, "n_layers": 1, "n_heads": 1, "ffn": 16}
    doc = _doc(toy, models=(), seeds=())
    doc["base"]["embed"] = {}
    doc["grid"]["embeddings"] = [{"method": "famae", "famae": tiny}]
    out = toy / "exp"
    statuses = {}
    run_experiment(parse_grid(doc, "test", out),
                   on_stage=lambda cell, r: statuses.setdefault(cell.tokenizer, {}).update({r.name: r.status}))
    assert statuses["rqkmeans"]["embeddings"] == "ran"
    assert {k: statuses["hkm"][k] for k in ("data", "split", "items", "embeddings", "codes")} == \
        {"data": "cached", "split": "cached", "items": "cached", "embeddings": "cached", "codes": "ran"}
    a, b = (out / "runs" / f"toy__famae__{t}" / "embeddings" for t in ("rqkmeans", "hkm"))
    assert json.loads((a / "meta.json").read_text())["params"]["method"] == "famae"
    assert (a / "meta.json").read_bytes() == (b / "meta.json").read_bytes()
    assert [r["embedding"] for r in _rows(out / "results.csv")] == ["famae", "famae"]


def test_jobs_2_runs_cells_in_parallel_and_gives_the_table_of_jobs_1(toy):
    doc = _doc(toy, seeds=(0,))
    seq, par = toy / "seq", toy / "par"
    run_experiment(parse_grid(doc, "test", seq))
    started, statuses = [], {}
    res = run_experiment(parse_grid(doc, "test", par), jobs=2,
                         on_cell=lambda i, cell, plan: started.append((i, cell.id)),
                         on_stage=lambda cell, r: statuses.setdefault(cell.tokenizer, []).append((r.name, r.status)))
    assert sorted(started) == [(0, "toy__file-emb__rqkmeans"), (1, "toy__file-emb__hkm")]
    # the tokenizer-independent stages ran once (first cell, in this process); the second cell copied them
    assert statuses["rqkmeans"] == [(s, "ran") for s in ("data", "split", "items", "embeddings")] + \
        [(s, "cached") for s in ("data", "split", "items", "embeddings")] + \
        [(s, "ran") for s in ("codes", "recommender", "diagnostics")]
    assert statuses["hkm"] == [(s, "cached") for s in ("data", "split", "items", "embeddings")] + \
        [(s, "ran") for s in ("codes", "recommender", "diagnostics")]
    for cell in ("toy__file-emb__rqkmeans", "toy__file-emb__hkm"):   # same bytes as one cell at a time
        a, b = (json.loads((d / "runs" / cell / "codes" / "meta.json").read_text()) for d in (seq, par))
        assert a["output_hash"] == b["output_hash"], cell
        w = "recommender/models/causal_sid/seed-0/weights.safetensors"
        assert (seq / "runs" / cell / w).read_bytes() == (par / "runs" / cell / w).read_bytes(), cell
    assert [r["tokenizer"] for r in res.rows] == ["rqkmeans", "hkm"]
    assert _strip_times(_rows(par / "results.csv")) == _strip_times(_rows(seq / "results.csv"))
    # everything cached now: a rerun in parallel runs nothing
    statuses.clear()
    run_experiment(parse_grid(doc, "test", par), jobs=2,
                   on_stage=lambda cell, r: statuses.setdefault(cell.tokenizer, []).append((r.name, r.status)))
    assert {s for v in statuses.values() for _, s in v} == {"cached"}


def test_jobs_2_trains_the_models_and_seeds_of_one_run_as_parallel_jobs(toy):
    """A run with several trainings (a grid's first run trains most rows) keeps both workers
    busy: its stages before the recommender run first, then each model and seed as a job of
    its own, then the run, which only evaluates: the same weights and table as one job."""
    doc = _doc(toy, tokenizers=({"method": "rqkmeans"},), models=(TINY_CAUSAL, {"type": "popularity"}),
               seeds=(0, 1))
    seq, par = toy / "seq", toy / "par"
    run_experiment(parse_grid(doc, "test", seq))
    events, statuses = [], []
    run_experiment(parse_grid(doc, "test", par), jobs=2,
                   on_training=lambda cell, label, seed, rec: events.append(
                       ("end" if rec else "start", label, seed, rec and rec["epochs_run"])),
                   on_stage=lambda cell, r: statuses.append((r.name, r.status)))
    # one job per training (popularity fits in the run's own job), both started before either ended
    assert sorted(events[:2]) == [("start", "causal_sid", 0, None), ("start", "causal_sid", 1, None)]
    assert sorted(events[2:]) == [("end", "causal_sid", 0, 1), ("end", "causal_sid", 1, 1)]
    assert [n for n, _ in statuses[-3:]] == ["codes", "recommender", "diagnostics"]
    assert len(statuses) == len({n for n, _ in statuses}) + 4     # the shared stages: ran, then cached
    run = "runs/toy__file-emb__rqkmeans"
    for seed in (0, 1):
        w = f"{run}/recommender/models/causal_sid/seed-{seed}/weights.safetensors"
        assert (seq / w).read_bytes() == (par / w).read_bytes(), seed
    assert not (par / run / "checkpoints" / "recommender").exists()     # removed once the stage finished
    assert _strip_times(_rows(par / "results.csv")) == _strip_times(_rows(seq / "results.csv"))
    m = json.loads((par / run / "recommender" / "metrics.json").read_text())
    assert [(r["label"], r["seed"], r["epochs_run"]) for r in m["records"]] == \
        [("causal_sid", 0, 1), ("causal_sid", 1, 1), ("popularity", 0, 0), ("popularity", 1, 0)]


def test_a_cell_that_fails_in_a_worker_raises_its_error_and_keeps_the_other_rows(toy):
    doc = _doc(toy, models=({"type": "popularity"},), seeds=(0,))
    doc["grid"]["tokenizers"][1]["codebook_sizes"] = [100, 4]     # 60 items: fails when fitting
    out = toy / "exp"
    with pytest.raises(DataError) as e:
        run_experiment(parse_grid(doc, "test", out), jobs=2)
    # problem and fix survive the worker process, with the cell named
    assert e.value.problem == "cell toy__file-emb__hkm: X has 60 items but 100 clusters/codewords were " \
        "requested (more clusters than items)"
    assert e.value.fix.startswith("use fewer clusters")
    assert [r["tokenizer"] for r in _rows(out / "results.csv")] == ["rqkmeans"]   # the other cell's row
    assert not (out / "runs" / "toy__file-emb__hkm" / "codes").exists()          # no partial output
    with pytest.raises(ConfigError, match="jobs must be a whole number >= 1"):
        run_experiment(parse_grid(doc, "test", toy / "other"), jobs=0)
    assert not (toy / "other").exists()


def test_cli_jobs_option(toy):
    f = toy / "grid.toml"
    f.write_text(_toml(toy, toy / "exp"))
    r = runner.invoke(app, ["experiment", str(f), "--jobs", "2"])
    assert r.exit_code == 0, r.output
    assert "toy__file-emb__hkm: 3 stage(s) to run, started" in r.output
    assert "    toy__file-emb__hkm [codes      ]" in r.output
    assert re.search(r"\| toy \| file-emb \| hkm \| popularity( \(chosen\))? \| 0 \|", r.output)
    r = runner.invoke(app, ["experiment", str(f), "--jobs", "0"])
    assert r.exit_code == 2 and "--jobs" in r.output
    r = runner.invoke(app, ["experiment", str(f), "--only", "hkm,toy__file-emb__hkm"])
    assert r.exit_code == 0, r.output
    assert "[2/2] toy__file-emb__hkm: every stage cached" in r.output and "[1/2]" not in r.output
    # complete: still in the table (the row validation chose is marked)
    assert re.search(r"\| toy \| file-emb \| rqkmeans \| popularity( \(chosen\))? \| 0 \|", r.output)


def test_with_jobs_a_cell_is_reported_started_only_when_a_worker_is_free(toy):
    doc = _doc(toy, tokenizers=({"method": "rqkmeans", "label": "a"}, {"method": "rqkmeans", "label": "b"},
                                {"method": "rqkmeans", "label": "c"}),
               models=({"type": "popularity"},), seeds=(0,))
    events = []
    run_experiment(parse_grid(doc, "test", toy / "exp"), jobs=2,
                   on_cell=lambda i, cell, plan: events.append(("start", cell.tokenizer)),
                   on_stage=lambda cell, r: r.name == "diagnostics" and events.append(("end", cell.tokenizer)))
    assert events[:2] == [("start", "a"), ("start", "b")]    # two workers: the third waits for one
    assert events.index(("start", "c")) > min(events.index(("end", "a")), events.index(("end", "b")))
    assert sorted(events) == sorted([(e, t) for t in "abc" for e in ("start", "end")])


@pytest.mark.parametrize("to,sig", [("main", "SIGTERM"), ("group", "SIGTERM"), ("group", "SIGINT")])
def test_a_signal_stops_a_parallel_grid_and_its_workers_at_once_and_it_resumes(toy, to, sig):
    """SIGTERM to `sidkit experiment --jobs 2` stops the workers too (not after their
    cells finish), leaves no temporary folder, and the next invocation resumes.  So does a
    signal to the whole process group (Ctrl-C in a terminal, ``kill -- -PGID``): every
    worker gets it too, and none goes on to take another job while the main process waits."""
    import os
    import signal
    import subprocess
    import sys
    import time

    third = '[[grid.tokenizers]]\nmethod = "rqkmeans"\nlabel = "third"\ncodebook_sizes = [4, 3]\n'
    # three runs on two workers: a third job waits (a worker must not take it once signalled)
    doc_toml = _toml(toy, toy / "exp", extra_tokenizer=third).replace("epochs = 1,", "epochs = 400, patience = 400,")
    doc_toml = doc_toml.replace('type = "popularity"', 'type = "causal_sid"\nhidden = 16\nn_layers = 1\n'
                                'n_heads = 1\nmax_len = 4\nbeam = 5')
    f = toy / "grid.toml"
    f.write_text(doc_toml)
    env = {**os.environ, "SIDKIT_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sidkit", "experiment", str(f), "--jobs", "2"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    ckpt = toy / "exp" / "runs" / "toy__file-emb__hkm" / "checkpoints"
    deadline = time.time() + 600     # a generous wait for the first epoch (a busy machine), not a speed check
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert ckpt.exists(), proc.communicate()[0].decode()
    if to == "main":
        proc.send_signal(getattr(signal, sig))
    else:
        os.killpg(proc.pid, getattr(signal, sig))
    out = proc.communicate(timeout=120)[0].decode()   # a hang guard only
    assert proc.returncode != 0, out
    # stopped at once, not after the cells finished: no cell wrote its results, and every
    # checkpoint of the 400-epoch models stands well short of the last epoch
    runs = toy / "exp" / "runs"
    states = [json.loads(p.read_text()) for p in runs.glob("*/checkpoints/**/state.json")]
    assert states and all(st["epoch"] < 400 for st in states), [st["epoch"] for st in states]
    assert not list(runs.glob("*/recommender")), out
    for _ in range(50):    # multiprocessing's resource tracker exits once its pipe closes
        left = subprocess.run(["pgrep", "-a", "-g", str(proc.pid)], capture_output=True,
                              text=True).stdout.splitlines()
        if not left:
            break
        time.sleep(0.1)
    assert left == [], f"worker processes survived: {left}"
    assert not [p for p in runs.rglob(".*") if p.name.endswith(".tmp") or ".tmp-" in p.name]
    assert not (runs / "toy__file-emb__hkm" / "recommender").exists()


def test_only_runs_the_named_cells_and_the_table_keeps_the_complete_ones(toy):
    doc = _doc(toy, tokenizers=({"method": "rqkmeans", "label": "a"}, {"method": "rqkmeans", "label": "b"},
                                {"method": "hkm", "label": "c"}),
               models=({"type": "popularity"},), seeds=(0,))
    out = toy / "exp"
    ran = []
    run_experiment(parse_grid(doc, "test", out), only=["a"],
                   on_cell=lambda i, cell, plan: ran.append((i, cell.tokenizer)))
    assert ran == [(0, "a")] and not (out / "runs" / "toy__file-emb__b").exists()
    assert [r["tokenizer"] for r in _rows(out / "results.csv")] == ["a"]
    # c by its cell id, in 2 processes: the table lists a (complete, not rerun) and c, in grid order
    ran.clear()
    statuses = {}
    run_experiment(parse_grid(doc, "test", out), only=["toy__file-emb__c"], jobs=2,
                   on_cell=lambda i, cell, plan: ran.append((i, cell.tokenizer)),
                   on_stage=lambda cell, r: statuses.setdefault(cell.tokenizer, []).append(r.status))
    assert ran == [(2, "c")] and set(statuses) == {"c"}
    assert [r["tokenizer"] for r in _rows(out / "results.csv")] == ["a", "c"]
    with pytest.raises(ConfigError, match="--only nope names no run of the grid") as e:
        run_experiment(parse_grid(doc, "test", out), only=["nope"])
    assert "toy__file-emb__b" in e.value.fix
    r = runner.invoke(app, ["experiment", str(toy / "missing.toml"), "--only", "a"])
    assert r.exit_code == 1


def test_exclude_and_model_runs_pick_the_runs_and_bad_patterns_are_named(toy):
    doc = _doc(toy, tokenizers=({"method": "rqkmeans"}, {"method": "hkm"}, {"method": "rqkmeans", "label": "rq2"}),
               models=({"type": "popularity"}, {**TINY_CAUSAL, "runs": ["*__hkm"]}))
    doc["grid"]["exclude"] = ["file-emb__rq2"]
    grid = parse_grid(doc, "test", toy / "exp")
    assert [c.tokenizer for c in grid.cells] == ["rqkmeans", "hkm"]
    assert [c.model_labels for c in grid.cells] == [["popularity"], ["popularity", "causal_sid"]]
    for key, value, message in (("exclude", ["*__nope"], "exclude pattern '*__nope' matches no run"),
                                ("exclude", ["*"], "exclude leaves no run")):
        bad = copy.deepcopy(doc)
        bad["grid"][key] = value
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_grid(bad, "test", toy / "exp")
    bad = copy.deepcopy(doc)
    bad["grid"]["models"][1]["runs"] = ["*__nope"]
    with pytest.raises(ConfigError, match=re.escape("model 'causal_sid': runs pattern '*__nope' matches no run")):
        parse_grid(bad, "test", toy / "exp")
    bad["grid"]["models"][1]["runs"] = "*__hkm"
    with pytest.raises(ConfigError, match="runs must be a list of patterns"):
        parse_grid(bad, "test", toy / "exp")


def test_shared_id_models_train_once_per_data_set_and_show_once(toy):
    doc = _doc(toy, models=({"type": "popularity"}, TINY_CAUSAL), seeds=(0,))
    doc["grid"]["share_id_models"] = True
    grid = parse_grid(doc, "test", toy / "exp")
    assert [c.model_labels for c in grid.cells] == [["popularity", "causal_sid"], ["causal_sid"]]
    run_experiment(grid)
    rows = _rows(toy / "exp" / "results.csv")
    assert [(r["embedding"], r["tokenizer"], r["model"]) for r in rows] == [
        ("", "", "popularity"), ("file-emb", "rqkmeans", "causal_sid"), ("file-emb", "hkm", "causal_sid")]
    pop = rows[0]
    assert pop["k_eff"] == "" and pop["codebook_sizes"] == ""      # the SIDs' diagnostics do not apply
    md = (toy / "exp" / "results.md").read_text()
    assert re.search(r"\| toy \| - \| - \| popularity( \(chosen\))? \| 0 \|", md)
    assert "trained once per data set" in md
    # the grid's own models record why they stopped; TINY_TRAIN's cap is reached here
    doc_json = json.loads((toy / "exp" / "results.json").read_text())
    stops = {r["model"]: [s["stop"] for s in r["per_seed"]] for r in doc_json["rows"]}
    assert stops["popularity"] == [None] and set(stops["causal_sid"]) <= {"cap", "patience"}


def test_publish_writes_the_table_between_markers_and_keeps_the_text_around_it(toy):
    doc = _doc(toy, models=({"type": "popularity"}, TINY_CAUSAL), seeds=(0, 1))
    doc["grid"]["share_id_models"] = True
    doc["grid"]["datasets"] = [{"label": "toy", "reference": [
        {"model": "PaperRec", "source": "a paper", "metrics": {"ndcg@10": 0.99, "recall@10": 0.001}}]}]
    target = toy / "docs" / "results_toy"
    doc["publish"] = str(target)
    md, js = target.with_name("results_toy.md"), target.with_name("results_toy.json")

    # a file sidkit did not write is refused before anything runs
    md.parent.mkdir()
    md.write_text("# my notes\n")
    with pytest.raises(ConfigError, match="holds no table markers of experiment 'toy-grid'"):
        run_experiment(parse_grid(doc, "test", toy / "exp"))
    assert not (toy / "exp").exists() and md.read_text() == "# my notes\n" and not js.exists()

    begin = "<!-- sidkit experiment toy-grid: table begin (rewritten by `sidkit experiment`; write outside the markers) -->"
    end = "<!-- sidkit experiment toy-grid: table end -->"
    md.write_text(f"# Toy results\n\nBefore.\n\n{begin}\nold table\n{end}\n\nWhy: prose kept.\n")
    run_experiment(parse_grid(doc, "test", toy / "exp"))
    text = md.read_text()
    assert text.startswith("# Toy results\n\nBefore.\n\n" + begin + "\n# Experiment toy-grid")
    assert text.endswith(end + "\n\nWhy: prose kept.\n") and "old table" not in text
    assert text.split(begin)[1].split(end)[0].strip() == (toy / "exp" / "results.md").read_text().strip()
    assert json.loads(js.read_text()) == json.loads((toy / "exp" / "results.json").read_text())
    # the comparison with the published row: both kinds, below on N@10, above on R@10, by more than the std
    line = next(ln for ln in text.splitlines() if ln.startswith("- toy, **PaperRec**"))
    assert "published: N@10 .9900, R@10 .0010" in line
    assert "best SID model (file-emb/" in line and "best model without SIDs (- popularity)" in line
    assert re.search(r"N@10 \.\d{4} ± \.\d{4} \(-\.\d{4}\*\)", line) and re.search(r"R@10 \.\d{4} ± \.\d{4} \(\+", line)

    # a JSON file that is not this grid's results is refused as well
    js.write_text('{"mine": 1}')
    with pytest.raises(ConfigError, match="is not the results of experiment 'toy-grid'"):
        run_experiment(parse_grid(doc, "test", toy / "exp"))
    assert js.read_text() == '{"mine": 1}'


def test_threads_are_checked_and_set_for_a_single_job(toy):
    import torch

    doc = _doc(toy, tokenizers=({"method": "rqkmeans"},), models=(), seeds=())
    with pytest.raises(ConfigError, match="threads must be a whole number >= 1"):
        run_experiment(parse_grid(doc, "test", toy / "exp"), threads=0)
    before = torch.get_num_threads()
    try:
        run_experiment(parse_grid(doc, "test", toy / "exp"), threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_status_reads_where_a_grid_stands_from_its_folders(toy):
    doc = _doc(toy, tokenizers=({"method": "rqkmeans"},), models=(TINY_CAUSAL,), seeds=(0, 1))
    doc["base"]["train"]["epochs"] = 2
    grid = parse_grid(doc, "test", toy / "exp")
    from sidkit.grid import progress, progress_markdown

    assert [(r["model"], r["seed"], r["status"]) for r in progress(grid)] == [
        ("causal_sid", 0, "waiting"), ("causal_sid", 1, "waiting")]
    ck = grid.cells[0].dir / "checkpoints" / "recommender" / "causal_sid" / "seed-0"
    ck.mkdir(parents=True)
    state = {"history": [{"epoch": 1, "seconds": 3.0, "valid_seconds": 1.5}], "best": 0.25, "best_epoch": 1,
             "stopped": False}
    (ck / "state.json").write_text(json.dumps(state))
    rows = progress(grid)
    assert rows[0] == {"run": "toy__file-emb__rqkmeans", "model": "causal_sid", "seed": 0, "status": "training",
                       "epochs": 1, "best_epoch": 1, "valid_ndcg10": 0.25, "seconds_per_epoch": 3.0,
                       "seconds_per_validation": 1.5}
    assert "| toy__file-emb__rqkmeans | causal_sid | 0 | training | 1 | 1 | 0.2500 |  | 3.0 | 1.5 |" \
        in progress_markdown(rows)
    (ck / "state.json").write_text(json.dumps({**state, "stopped": True}))   # patience ran out: awaits test
    assert progress(grid)[0]["status"] == "trained"
    import shutil

    shutil.rmtree(grid.cells[0].dir / "checkpoints")
    run_experiment(grid)
    rows = progress(grid)
    doc_m = json.loads((grid.cells[0].dir / "recommender" / "metrics.json").read_text())
    assert [r["status"] for r in rows] == ["done", "done"]
    assert [r["test_ndcg10"] for r in rows] == [r["test"]["ndcg@10"] for r in doc_m["records"]]


def test_parallel_jobs_run_the_trainings_seed_by_seed_and_the_time_budgeted_ones_last(toy):
    """The queue of a parallel grid: a run's stages first, then its trainings by seed and
    model, a training with [train] max_minutes after every other one."""
    from sidkit.grid import _Jobs

    budgeted = {**TINY_CAUSAL, "label": "budgeted", "train": {**TINY_TRAIN, "max_minutes": 1}}
    doc = _doc(toy, tokenizers=({"method": "rqkmeans"},), models=(budgeted, TINY_CAUSAL), seeds=(0, 1))
    grid = parse_grid(doc, "test", toy / "order")
    queue = _Jobs(grid, list(grid.cells), None)
    prep = queue.next()
    assert prep.kind == "prep"
    queue.ended(prep, [])
    order = []
    while (task := queue.next()) is not None and task.kind == "fit":
        order.append((task.label, task.seed))
    assert order == [("causal_sid", 0), ("causal_sid", 1), ("budgeted", 0), ("budgeted", 1)]
