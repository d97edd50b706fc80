"""Pipeline and CLI behaviour on a small synthetic data set (fast, no text model)."""

import numpy as np
import pytest
from typer.testing import CliRunner

from sidkit.cli import app
from sidkit.config import config_from_dict
from sidkit.errors import DataError
from sidkit.pipeline import STAGES, item_index, run_pipeline
from sidkit.types import Codes

runner = CliRunner()


@pytest.fixture
def toy(tmp_path):
    """60 items in 3 clusters, 40 users, RecBole atomic files + an embeddings .npy."""
    rng = np.random.default_rng(0)
    d = tmp_path / "toy"
    d.mkdir()
    n_items, n_users = 60, 40
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(n_users):
        items = rng.choice(n_items, size=12, replace=False)
        rows += [f"u{u}\ti{i}\t4\t{1000 + 10 * t + u}" for t, i in enumerate(items)]
    (d / "toy.inter").write_text("\n".join(rows) + "\n")
    item_rows = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    item_rows += [f"i{i}\tMovie {i}\t{1990 + i % 10}\tDrama" for i in range(n_items)]
    (d / "toy.item").write_text("\n".join(item_rows) + "\n")
    centers = rng.normal(size=(3, 16)) * 5
    X = centers[np.arange(n_items) % 3] + rng.normal(size=(n_items, 16))
    # the item table is sorted by item id as a string: i0, i1, i10, ...
    order = np.argsort(np.array([f"i{i}" for i in range(n_items)]))
    np.save(tmp_path / "emb.npy", X[order].astype(np.float32))
    return tmp_path


def _cfg(toy, **over):
    base = {"data": {"dataset": str(toy / "toy"), "user_core": 2},
            "embed": {"embeddings_file": str(toy / "emb.npy")},
            "codes": {"codebook_sizes": [3, 4], "n_levels": 2},
            "diagnostics": {"perturbation_scales": [0.1, 0.5]}}
    for k, v in over.items():
        base.setdefault(k, {}).update(v)
    return config_from_dict(base)


def test_pipeline_runs_caches_and_reruns_changed_stages(toy):
    out = toy / "run"
    res = run_pipeline(_cfg(toy), out)
    assert [r.name for r in res.stages] == list(STAGES)
    assert all(r.status == "ran" for r in res.stages)
    codes = Codes.load(out / "codes" / "codes")
    assert codes.n_items == 60 and not codes.has_collisions()
    # every SID decodes back to exactly its item
    np.testing.assert_array_equal(codes.lookup(codes.codes, codes.lengths), np.arange(60))
    # 3 well-separated clusters -> the first level has 3 groups of 20
    assert sorted(np.bincount(codes.codes[:, 0]).tolist()) == [20, 20, 20]
    assert (out / "diagnostics" / "report.html").exists()

    again = run_pipeline(_cfg(toy), out)
    assert all(r.status == "cached" for r in again.stages)

    changed = run_pipeline(_cfg(toy, codes={"params": {"n_iter": 5}}), out)
    status = {r.name: r.status for r in changed.stages}
    assert status == {"data": "cached", "split": "cached", "items": "cached",
                      "embeddings": "cached", "codes": "ran", "diagnostics": "ran"}
    forced = run_pipeline(_cfg(toy), out, force=True)
    assert all(r.status == "ran" for r in forced.stages)


def test_cli_run_prints_summaries(toy):
    cfg = toy / "c.toml"
    cfg.write_text(
        f'[data]\ndataset = "{toy / "toy"}"\nuser_core = 2\n'
        f'[embed]\nembeddings_file = "{toy / "emb.npy"}"\n'
        '[codes]\nn_levels = 2\ncodebook_sizes = [3, 4]\n')
    r = runner.invoke(app, ["run", str(cfg), "--out", str(toy / "run")])
    assert r.exit_code == 0, r.output
    assert "Semantic IDs" in r.output and "60 items" in r.output and "perplexity" in r.output


def _stage_dirs(out):
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


@pytest.mark.parametrize("over, message", [
    ({"data": {"dataset": "no-such-data"}}, "unknown data set"),
    ({"data": {"user_core": 1000}}, "k"),
])
def test_bad_data_gives_clear_error_and_no_artifact(toy, over, message):
    out = toy / "run"
    with pytest.raises(DataError, match=message):
        run_pipeline(_cfg(toy, **over), out)
    assert _stage_dirs(out) == []  # nothing half-written, no temp dirs


def test_bad_embeddings_leave_no_embeddings_artifact(toy):
    X = np.load(toy / "emb.npy")
    X[5, 3] = np.nan
    np.save(toy / "nan.npy", X)
    np.save(toy / "short.npy", X[:10])
    out = toy / "run"
    with pytest.raises(DataError, match="NaN or inf"):
        run_pipeline(_cfg(toy, embed={"embeddings_file": str(toy / "nan.npy")}), out)
    assert _stage_dirs(out) == ["data", "items", "split"]
    with pytest.raises(DataError, match=r"shape \(10, 16\), expected \(60, dim\)"):
        run_pipeline(_cfg(toy, embed={"embeddings_file": str(toy / "short.npy")}), out)
    assert _stage_dirs(out) == ["data", "items", "split"]


def test_cli_errors_exit_nonzero_with_message(toy):
    (toy / "c.toml").write_text(f'[data]\ndataset = "{toy / "toy"}"\n')
    bad = toy / "bad.toml"
    bad.write_text("[codes]\nmethd = 'x'\n")
    r = runner.invoke(app, ["run", str(bad), "--out", str(toy / "run")])
    assert r.exit_code == 1 and "unknown key 'codes.methd'" in r.output
    r = runner.invoke(app, ["run", str(toy / "c.toml"), "--method", "nope", "--out", str(toy / "run2")])
    assert r.exit_code == 1 and "unknown tokenizer 'nope'" in r.output
    assert not (toy / "run2").exists()  # failed before any stage ran


def test_unknown_tokenizer_parameter(toy):
    with pytest.raises(DataError, match="no parameter"):
        run_pipeline(_cfg(toy, codes={"params": {"bogus": 1}}), toy / "run")


def test_item_index():
    ids = np.array(["b", "a", "c"])
    np.testing.assert_array_equal(item_index(ids, ["c", "a", "z"]), [2, 1, -1])


def test_changed_input_file_is_a_cache_miss(toy):
    out = toy / "run"
    run_pipeline(_cfg(toy), out)
    with open(toy / "toy" / "toy.inter", "a") as f:
        f.write("u0\ti59\t5\t99999\n")
    status = {r.name: r.status for r in run_pipeline(_cfg(toy), out).stages}
    assert status["data"] == "ran" and status["split"] == "ran"
    # the item table did not change, so the items/embeddings artifacts are identical -> cached
    assert status["items"] == "ran" and status["embeddings"] == "cached"


def test_cli_tokenize_and_embed(toy, sidkit_home):
    out = toy / "tok"
    r = runner.invoke(app, ["tokenize", str(toy / "emb.npy"), "--out", str(out), "--levels", "2",
                            "--sizes", "3,4", "-p", "n_iter=10"])
    assert r.exit_code == 0, r.output
    codes = Codes.load(out / "codes")
    assert codes.n_items == 60 and codes.params["n_iter"] == 10 and not codes.has_collisions()
    from sidkit.tokenizers import Tokenizer
    tok = Tokenizer.load(out / "tokenizer")
    np.testing.assert_array_equal(tok.encode(np.load(toy / "emb.npy")).codes, codes.codes)
    r = runner.invoke(app, ["tokenize", str(toy / "emb.npy"), "--out", str(toy / "t2"), "-p", "oops"])
    assert r.exit_code == 1 and "key=value" in r.output

    r = runner.invoke(app, ["embed", str(toy / "toy"), "--out", str(toy / "emb")])
    assert r.exit_code == 0, r.output
    from sidkit.types import Embeddings
    e = Embeddings.load(toy / "emb")
    assert e.vectors.shape == (60, 384) and e.item_ids[0] == "i0"


def test_hourglass_remedies_in_the_pipeline(toy):
    out = toy / "run"
    full = Codes.load(run_pipeline(_cfg(toy), out).out / "codes" / "codes")
    dropped = run_pipeline(_cfg(toy, codes={"hourglass_remedy": "drop_level", "hourglass_level": 1}), out)
    d = Codes.load(out / "codes" / "codes")
    assert d.params["hourglass"]["remedy"] == "drop_level"
    np.testing.assert_array_equal(d.codes[:, 0], full.codes[:, 0])  # level 0 kept
    assert not d.has_collisions() and dropped.summary("codes")["n_items"] == 60
    run_pipeline(_cfg(toy, codes={"hourglass_remedy": "topk", "hourglass_k": 1}), out)
    t = Codes.load(out / "codes" / "codes")
    info = t.params["hourglass"]
    assert info["k"] == 1 and info["n_shortened"] > 0 and t.is_variable_length
    assert not t.has_collisions()
    np.testing.assert_array_equal(t.lookup(t.codes, t.lengths), np.arange(60))
