"""`sidkit train` / `sidkit evaluate`, the optional recommender stage of `sidkit run`."""

import json

import pytest
from typer.testing import CliRunner

from sidkit.cli import app
from sidkit.config import config_from_dict
from sidkit.errors import ConfigError
from sidkit.pipeline import build_stages
from test_pipeline import toy  # noqa: F401  (fixture: the pipeline's synthetic data set)
from _training import write_tiny_interactions

runner = CliRunner()


@pytest.fixture
def tiny(tmp_path):
    """30 items, 40 users with 10 interactions each (RecBole atomic files)."""
    write_tiny_interactions(tmp_path)
    return tmp_path


def _toml(tmp, model: str, extra: str = "") -> str:
    p = tmp / f"{model}.toml"
    p.write_text(f'[data]\ndataset = "{tmp / "tiny"}"\nuser_core = 0\n\n[model]\ntype = "{model}"\n'
                 + ("hidden = 8\nn_blocks = 1\nn_heads = 1\nmax_len = 6\n" if model == "sasrec" else "")
                 + '\n[train]\nepochs = 2\nbatch_size = 16\nwarmup_steps = 2\n' + extra)
    return str(p)


def test_cli_train_and_evaluate(tiny):
    out = tiny / "run"
    r = runner.invoke(app, ["train", _toml(tiny, "sasrec", "seeds = [0, 1]\n"), "--out", str(out),
                            "--device", "cpu"])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "recommender" / "metrics.json").read_text())
    assert [rec["seed"] for rec in doc["records"]] == [0, 1]
    rec = doc["records"][0]
    assert rec["model"] == "sasrec" and rec["tokenizer"] is None and rec["epochs_run"] == 2
    assert 1 <= rec["best_epoch"] <= 2 and rec["seconds_per_epoch"] > 0
    assert set(rec["test"]) >= {"recall@5", "ndcg@10", "mrr@20", "coverage@10"}
    assert doc["protocol"]["mask_seen"] is False and doc["summary"]["sasrec"]["n_seeds"] == 2
    md = (out / "recommender" / "metrics.md").read_text()
    assert "Seen items masked: **no**" in md and "| sasrec | 2 |" in md
    assert "ndcg@10" in r.output
    assert not (out / "checkpoints" / "recommender" / "sasrec" / "seed-0").exists()   # removed once done

    # evaluate the stored models: same figures as training wrote
    r = runner.invoke(app, ["evaluate", str(out), "--json"])
    assert r.exit_code == 0, r.output
    ev = json.loads(r.output)
    assert ev["records"][0]["ndcg@10"] == pytest.approx(rec["test"]["ndcg@10"])
    r = runner.invoke(app, ["evaluate", str(out / "recommender" / "models" / "sasrec" / "seed-1"), "--mask-seen"])
    assert r.exit_code == 0 and "seen items masked: yes" in r.output

    # a second train is a cache hit
    r = runner.invoke(app, ["train", _toml(tiny, "sasrec", "seeds = [0, 1]\n"), "--out", str(out)])
    assert r.exit_code == 0 and "cached" in r.output


def test_cli_bad_inputs(tiny):
    out = tiny / "run"
    r = runner.invoke(app, ["train", _toml(tiny, "popularity"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    # a config without [model]
    bare = tiny / "bare.toml"
    bare.write_text(f'[data]\ndataset = "{tiny / "tiny"}"\n')
    r = runner.invoke(app, ["train", str(bare), "--out", str(tiny / "x")])
    assert r.exit_code == 1 and "no [model] table" in r.output
    assert not (tiny / "x" / "recommender").exists()
    # model-specific keys under another type, unknown [train] keys
    bad = tiny / "bad.toml"
    bad.write_text('[model]\ntype = "popularity"\nhidden = 3\n')
    r = runner.invoke(app, ["train", str(bad), "--out", str(tiny / "y")])
    assert r.exit_code == 1 and "unknown key 'model.popularity.hidden'" in r.output
    # evaluating on another catalogue
    (tiny / "tiny2").mkdir()
    rows = (tiny / "tiny" / "tiny.inter").read_text().replace("\ti0", "\tj0")
    (tiny / "tiny2" / "tiny2.inter").write_text(rows)
    cfg2 = tiny / "c2.toml"
    cfg2.write_text(f'[data]\ndataset = "{tiny / "tiny2"}"\nuser_core = 0\n[model]\ntype = "popularity"\n')
    assert runner.invoke(app, ["train", str(cfg2), "--out", str(tiny / "run2")]).exit_code == 0
    r = runner.invoke(app, ["evaluate", str(out), "--split", str(tiny / "run2" / "split")])
    assert r.exit_code == 1 and "another catalogue" in r.output
    # a cut-off beyond the catalogue (30 items)
    r = runner.invoke(app, ["evaluate", str(out), "--ks", "5,40"])
    assert r.exit_code == 1 and "k=40 is larger than the catalogue (30 items)" in r.output
    # nothing trained there
    r = runner.invoke(app, ["evaluate", str(tiny / "x")])
    assert r.exit_code == 1 and "no trained recommender" in r.output


def test_interrupted_cli_run_resumes_and_refuses_a_changed_config(tiny, monkeypatch):
    from sidkit.training import loop as train_mod

    out = tiny / "run"
    cfg = _toml(tiny, "sasrec", "seeds = [0]\n")
    real = train_mod.save_checkpoint
    calls = []

    class Crash(Exception):
        pass

    def crash_after_first(path, **kw):
        real(path, **kw)
        calls.append(kw["state"]["epoch"])
        if kw["state"]["epoch"] == 1 and len(calls) == 1:
            raise Crash

    monkeypatch.setattr(train_mod, "save_checkpoint", crash_after_first)
    with pytest.raises(Crash):
        runner.invoke(app, ["train", cfg, "--out", str(out)], catch_exceptions=False)
    assert not (out / "recommender").exists()                    # nothing half-written
    assert (out / "checkpoints" / "recommender" / "sasrec" / "seed-0" / "state.json").is_file()
    # a changed model config refuses the stored checkpoint
    changed = tiny / "changed.toml"
    changed.write_text(open(cfg).read().replace("hidden = 8", "hidden = 4"))
    r = runner.invoke(app, ["train", str(changed), "--out", str(out)])
    assert r.exit_code == 1 and "another model config" in r.output and "--force" in r.output
    assert not (out / "recommender").exists()
    # the original config resumes (epoch 2 only) and finishes
    r = runner.invoke(app, ["train", cfg, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert calls == [1, 2]
    doc = json.loads((out / "recommender" / "metrics.json").read_text())
    assert doc["records"][0]["epochs_run"] == 2


def test_run_gains_a_recommender_stage_only_with_a_model_table(tmp_path):
    base = {"data": {"dataset": "x"}, "embed": {"embeddings_file": None}}
    names = [s.name for s in build_stages(config_from_dict(base))]
    assert "recommender" not in names
    names = [s.name for s in build_stages(config_from_dict({**base, "model": {"type": "popularity"}}))]
    assert names[-2:] == ["recommender", "diagnostics"]
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'"):
        config_from_dict({"train": {"epoch": 3}})


def test_run_with_a_model_writes_metrics_and_the_report_section(toy):
    from test_pipeline import _cfg

    from sidkit.pipeline import run_pipeline

    cfg = _cfg(toy, model={"type": "popularity"})
    res = run_pipeline(cfg, toy / "run")
    assert [r.name for r in res.stages][-2:] == ["recommender", "diagnostics"]
    doc = json.loads((toy / "run" / "recommender" / "metrics.json").read_text())
    assert doc["records"][0]["model"] == "popularity" and doc["protocol"]["mask_seen"] is False
    html = (toy / "run" / "diagnostics" / "report.html").read_text()
    assert 'id="recommendation"' in html and "seen items masked: no" in html
    assert "Recommendation metrics" in (toy / "run" / "diagnostics" / "report.md").read_text()


TINY_CAUSAL = {"type": "causal_sid", "hidden": 16, "n_layers": 1, "n_heads": 1, "max_len": 4,
               "dropout": 0.0, "beam": 5}
TINY_TRAIN = {"epochs": 1, "batch_size": 32, "warmup_steps": 1}


def test_run_feeds_its_own_codes_to_a_causal_sid_model(toy):
    """No [model] codes: the recommender stage reads RUN/codes and reruns when the codes change."""
    from test_pipeline import _cfg

    from sidkit.models import Recommender
    from sidkit.pipeline import run_pipeline
    from sidkit.types import Codes

    cfg = _cfg(toy, model=TINY_CAUSAL, train=TINY_TRAIN)
    rec_stage = [s for s in build_stages(cfg) if s.name == "recommender"][0]
    assert rec_stage.inputs == ("split", "codes")
    out = toy / "run"
    res = run_pipeline(cfg, out)
    assert all(r.status == "ran" for r in res.stages)
    doc = json.loads((out / "recommender" / "metrics.json").read_text())
    assert doc["records"][0]["model"] == "causal_sid"
    assert doc["records"][0]["test"]["invalid_rate"] == 0.0
    # the trained model holds exactly the run's SIDs (catalogue order)
    model = Recommender.load(out / "recommender" / "models" / "causal_sid" / "seed-0")
    codes = Codes.load(out / "codes" / "codes")
    assert model.tokens_.codes.codebook_sizes == codes.codebook_sizes
    assert sorted(map(tuple, model.tokens_.codes.codes.tolist())) == sorted(map(tuple, codes.codes.tolist()))

    again = run_pipeline(cfg, out)
    assert all(r.status == "cached" for r in again.stages)
    changed = run_pipeline(_cfg(toy, model=TINY_CAUSAL, train=TINY_TRAIN,
                                codes={"codebook_sizes": [4, 4]}), out)
    status = {r.name: r.status for r in changed.stages}
    assert status["split"] == "cached" and status["codes"] == "ran" and status["recommender"] == "ran"
    model = Recommender.load(out / "recommender" / "models" / "causal_sid" / "seed-0")
    assert model.tokens_.codes.codebook_sizes[:2] == (4, 4)


def test_explicit_codes_path_or_id_only_do_not_depend_on_the_codes_stage(toy):
    from test_pipeline import _cfg

    for extra in ({"codes": str(toy / "elsewhere")}, {"id_only": True}):
        cfg = _cfg(toy, model={**TINY_CAUSAL, **extra})
        assert [s for s in build_stages(cfg) if s.name == "recommender"][0].inputs == ("split",)
    cfg = _cfg(toy, model={"type": "popularity"})
    assert [s for s in build_stages(cfg) if s.name == "recommender"][0].inputs == ("split",)


def test_cli_train_runs_the_codes_stages_for_a_causal_sid_model(toy):
    cfg = toy / "causal.toml"
    cfg.write_text(f'[data]\ndataset = "{toy / "toy"}"\nuser_core = 2\n'
                   f'[embed]\nembeddings_file = "{toy / "emb.npy"}"\n'
                   '[codes]\ncodebook_sizes = [3, 4]\nn_levels = 2\n'
                   '[model]\ntype = "causal_sid"\nhidden = 16\nn_layers = 1\nn_heads = 1\nmax_len = 4\nbeam = 5\n'
                   '[train]\nepochs = 1\nbatch_size = 32\nwarmup_steps = 1\n')
    out = toy / "trun"
    r = runner.invoke(app, ["train", str(cfg), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert (out / "codes" / "codes.npz").is_file()
    doc = json.loads((out / "recommender" / "metrics.json").read_text())
    assert doc["records"][0]["test"]["invalid_rate"] == 0.0
    assert not (out / "diagnostics").exists()


def test_cli_train_checks_the_tokenizer_before_any_stage(toy):
    cfg = toy / "bad.toml"
    cfg.write_text(f'[data]\ndataset = "{toy / "toy"}"\n[embed]\nembeddings_file = "{toy / "emb.npy"}"\n'
                   '[codes]\nmethod = "nope"\n[model]\ntype = "causal_sid"\n')
    r = runner.invoke(app, ["train", str(cfg), "--out", str(toy / "brun")])
    assert r.exit_code == 1 and "nope" in r.output
    assert not (toy / "brun" / "data").exists()


def _weights(out, label):
    return {p.relative_to(out).as_posix(): p.read_bytes()
            for p in sorted((out / "recommender" / "models" / label).rglob("*")) if p.is_file()}


def test_train_into_an_existing_run_keeps_its_models_and_replaces_only_with_force(tiny):
    """A run's trained models are user data: training another config into the run adds its
    model and keeps the others; a label trained with another config is replaced only with
    --force (announced), and never are models the config does not name deleted."""
    out = tiny / "run"
    r = runner.invoke(app, ["train", _toml(tiny, "sasrec"), "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    sasrec = _weights(out, "sasrec")

    r = runner.invoke(app, ["train", _toml(tiny, "popularity"), "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "recommender" / "metrics.json").read_text())
    assert doc["labels"] == ["sasrec", "popularity"]
    assert _weights(out, "sasrec") == sasrec                       # kept byte for byte, not retrained
    assert "| sasrec | 1 |" in (out / "recommender" / "metrics.md").read_text()

    # the same label with another config: refused, nothing changes
    other = tiny / "other.toml"
    other.write_text(open(_toml(tiny, "sasrec")).read().replace("hidden = 8", "hidden = 16"))
    r = runner.invoke(app, ["train", str(other), "--out", str(out)])
    assert r.exit_code != 0
    assert "model 'sasrec'" in r.output and "hidden" in r.output and "--force" in r.output
    assert _weights(out, "sasrec") == sasrec and (out / "recommender" / "models" / "popularity").is_dir()

    # under a new label it is added beside the others
    labelled = tiny / "labelled.toml"
    labelled.write_text(other.read_text().replace('type = "sasrec"', 'type = "sasrec"\nlabel = "sasrec-16"'))
    r = runner.invoke(app, ["train", str(labelled), "--out", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "recommender" / "metrics.json").read_text())
    assert doc["labels"] == ["sasrec", "popularity", "sasrec-16"] and _weights(out, "sasrec") == sasrec

    # --force replaces it, says so, and keeps the models the config does not name
    r = runner.invoke(app, ["train", str(other), "--out", str(out), "--force"])
    assert r.exit_code == 0, r.output
    assert "replacing model 'sasrec'" in r.output
    doc = json.loads((out / "recommender" / "metrics.json").read_text())
    assert doc["labels"] == ["sasrec", "popularity", "sasrec-16"]
    assert doc["models"]["sasrec"]["model"]["hidden"] == 16 and _weights(out, "sasrec") != sasrec

    # the default pipeline config naming only popularity keeps the three
    r = runner.invoke(app, ["train", _toml(tiny, "popularity"), "--out", str(out)])
    assert r.exit_code == 0 and "cached" in r.output
    assert json.loads((out / "recommender" / "metrics.json").read_text())["labels"] == [
        "sasrec", "popularity", "sasrec-16"]


def test_models_trained_on_another_split_are_not_silently_dropped(tiny):
    out = tiny / "run"
    assert runner.invoke(app, ["train", _toml(tiny, "sasrec"), "--out", str(out), "--device", "cpu"]).exit_code == 0
    sasrec = _weights(out, "sasrec")
    changed = tiny / "changed.toml"            # a temporal split under the kept model
    changed.write_text(open(_toml(tiny, "popularity")).read().replace("user_core = 0", "user_core = 0\nsplit = \"temporal\""))
    r = runner.invoke(app, ["train", str(changed), "--out", str(out)])
    assert r.exit_code != 0 and "model 'sasrec'" in r.output and "split changed" in r.output
    assert _weights(out, "sasrec") == sasrec
    r = runner.invoke(app, ["train", str(changed), "--out", str(out), "--force"])
    assert r.exit_code == 0 and "dropping model 'sasrec'" in r.output
    assert json.loads((out / "recommender" / "metrics.json").read_text())["labels"] == ["popularity"]


def test_a_finished_stage_removes_its_own_checkpoints_only(tiny):
    """The stage removes the checkpoints of the trainings it saved, never another
    training's (a grid run in parts shares RUN/checkpoints: seed 0 of one config may wait
    there while another config trains and finishes seed 1)."""
    out = tiny / "run"
    other = out / "checkpoints" / "recommender" / "sasrec" / "seed-7"
    foreign = out / "checkpoints" / "recommender" / "causal_sid" / "seed-0"
    for d in (other, foreign):
        d.mkdir(parents=True)
        (d / "state.json").write_text("{}")
    r = runner.invoke(app, ["train", _toml(tiny, "sasrec", "seeds = [0]\n"), "--out", str(out), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (out / "recommender" / "models" / "sasrec" / "seed-0").is_dir()
    assert not (out / "checkpoints" / "recommender" / "sasrec" / "seed-0").exists()
    assert (other / "state.json").is_file() and (foreign / "state.json").is_file()
