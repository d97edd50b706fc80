"""Pipeline and CLI behaviour on a small synthetic data set (fast, no text model)."""

import json
import re
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

from sidkit.cli import app
from sidkit.config import config_from_dict
from sidkit.errors import DataError
from sidkit.pipeline import STAGES, run_pipeline
from sidkit.utils import index_of
from sidkit.types import Codes

runner = CliRunner()


def n_cached(output: str) -> int:
    """Stages reported cached in a `sidkit run` log."""
    return len(re.findall(r"^\[\w+ *\] +cached", output, re.M))


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


def test_codebook_sizes_are_never_silently_dropped(toy):
    """GAOQ sizes its tree by branching: [codes] codebook_sizes used to be ignored for it
    (a codebook-size grid trained the same GAOQ SIDs under three labels)."""
    from sidkit.errors import ConfigError

    out = toy / "run"
    with pytest.raises(ConfigError, match=r"codebook_sizes = \[8, 8\] does not apply to 'gaoq'.*branching"):
        run_pipeline(_cfg(toy, codes={"method": "gaoq", "codebook_sizes": [8, 8]}), out)
    assert not out.exists() or "codes" not in _stage_dirs(out)


def test_item_index():
    ids = np.array(["b", "a", "c"])
    np.testing.assert_array_equal(index_of(["c", "a", "z"], ids), [2, 1, -1])
    np.testing.assert_array_equal(index_of(["a\0", "b"], ids), [-1, 0])   # exact strings, not numpy's
    np.testing.assert_array_equal(index_of(np.array(["c", "q"]), np.sort(ids), presorted=True), [2, -1])


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
    res = run_pipeline(_cfg(toy), out)
    full = Codes.load(res.out / "codes" / "codes")
    head = res.summary("diagnostics")
    # the decoder's reconstruction and the prefix mean (the MSE-optimal one for the same
    # partition of the items, so never worse) of the full semantic SID, side by side
    assert 0 < head["rel_mse_prefix_mean"] <= head["rel_mse"] * (1 + 1e-6)
    dropped = run_pipeline(_cfg(toy, codes={"hourglass_remedy": "drop_level", "hourglass_level": 1}), out)
    d = Codes.load(out / "codes" / "codes")
    assert d.params["hourglass"]["remedy"] == "drop_level"
    np.testing.assert_array_equal(d.codes[:, 0], full.codes[:, 0])  # level 0 kept
    assert not d.has_collisions() and dropped.summary("codes")["n_items"] == 60
    # edited codes: the tokenizer cannot decode them, so no decoder MSE (the prefix mean is
    # not passed off as one)
    assert dropped.summary("diagnostics")["rel_mse"] is None
    assert dropped.summary("diagnostics")["rel_mse_prefix_mean"] > 0
    topk = run_pipeline(_cfg(toy, codes={"hourglass_remedy": "topk", "hourglass_k": 1}), out)
    assert topk.summary("diagnostics")["rel_mse"] is None
    assert topk.summary("diagnostics")["rel_mse_prefix_mean"] > 0
    t = Codes.load(out / "codes" / "codes")
    info = t.params["hourglass"]
    assert info["k"] == 1 and info["n_shortened"] > 0 and t.is_variable_length
    assert not t.has_collisions()
    np.testing.assert_array_equal(t.lookup(t.codes, t.lengths), np.arange(60))


# ------------------------------------------------------ run directories (issue 8)
from sidkit.errors import ArtifactError, ConfigError  # noqa: E402


def test_user_folder_at_a_stage_path_is_an_error_and_untouched(toy):
    out = toy / "run"
    (out / "data").mkdir(parents=True)
    (out / "data" / "ratings.csv").write_text("user,item\n1,2\n")
    with pytest.raises(ArtifactError, match=r"run/data exists but was not written by sidkit \(no meta.json"):
        run_pipeline(_cfg(toy), out)
    assert _stage_dirs(out) == ["data"]  # no stage ran
    assert (out / "data" / "ratings.csv").read_text() == "user,item\n1,2\n"
    r = runner.invoke(app, ["run", "--out", str(out)])  # the CLI says so too, before fetching
    assert r.exit_code == 1 and "exists but was not written by sidkit" in r.output
    assert (out / "data" / "ratings.csv").exists()


def test_a_later_stage_folder_is_checked_before_the_first_stage_runs(toy):
    out = toy / "run"
    (out / "diagnostics").mkdir(parents=True)
    (out / "diagnostics" / "notes.md").write_text("mine")
    with pytest.raises(ArtifactError, match="diagnostics exists but was not written by sidkit"):
        run_pipeline(_cfg(toy), out)
    assert _stage_dirs(out) == ["diagnostics"]


def test_embeddings_file_inside_the_run_dir_is_refused(toy):
    out = toy / "run"
    (out / "embeddings").mkdir(parents=True)
    mine = out / "embeddings" / "my.npy"
    mine.write_bytes((toy / "emb.npy").read_bytes())
    with pytest.raises(ConfigError, match=r"embeddings_file .*my.npy lies inside the run directory's "
                                          r"stage folder .*run/embeddings"):
        run_pipeline(_cfg(toy, embed={"embeddings_file": str(mine)}), out)
    assert mine.read_bytes() == (toy / "emb.npy").read_bytes() and _stage_dirs(out) == ["embeddings"]
    # also when it is a previous run's own output that a rerun would replace
    run_pipeline(_cfg(toy, diagnostics={"report": False}), toy / "r2")
    prev = toy / "r2" / "embeddings" / "embeddings.npy"
    with pytest.raises(ConfigError, match="lies inside the run directory's stage folder"):
        run_pipeline(_cfg(toy, embed={"embeddings_file": str(prev)}), toy / "r2")


def test_corrupt_or_replaced_cached_outputs_rerun_with_a_reason(toy):
    cfg = toy / "c.toml"
    cfg.write_text(f'[data]\ndataset = "{toy / "toy"}"\nuser_core = 2\n'
                   f'[embed]\nembeddings_file = "{toy / "emb.npy"}"\n'
                   '[codes]\nn_levels = 2\ncodebook_sizes = [3, 4]\n'
                   '[diagnostics]\nperturbation_scales = [0.5]\nreport = false\n')
    out = toy / "run"
    cmd = ["run", str(cfg), "--out", str(out)]
    assert runner.invoke(app, cmd).exit_code == 0
    codes_before = (out / "codes" / "codes.npz").read_bytes()

    npz = out / "codes" / "codes.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    r = runner.invoke(app, cmd)
    assert r.exit_code == 0, r.output
    assert re.search(r"\[codes +\] output codes.npz changed since it was written "
                     r"\(size 100 bytes, recorded \d+\); rerunning", r.output)
    assert "[diagnostics] upstream stage 'codes' was rerun; rerunning" in r.output
    assert n_cached(r.output) == 4 and npz.read_bytes() == codes_before

    emb = out / "embeddings" / "embeddings.npy"
    emb.write_bytes(emb.read_bytes()[:-64])
    r = runner.invoke(app, cmd)
    assert "[embeddings ] output embeddings.npy changed since it was written (size" in r.output
    assert n_cached(r.output) == 3  # embeddings, codes, diagnostics ran again

    X = np.load(emb)
    np.save(emb, X[::-1].copy())  # other valid vectors, same size
    r = runner.invoke(app, cmd)
    assert "output embeddings.npy changed since it was written (content hash differs" in r.output
    assert n_cached(r.output) == 3
    np.testing.assert_array_equal(np.load(emb), X)
    assert n_cached(runner.invoke(app, cmd).output) == 6


def test_next_run_removes_temp_dirs_of_a_killed_run(toy):
    out = toy / "run"
    cfg = _cfg(toy, diagnostics={"report": False})
    run_pipeline(cfg, out)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = [out / f".codes.{dead.pid}-abcdefgh.tmp", out / ".items.abcdefgh.tmp"]
    for p in left:
        p.mkdir()
        (p / "codes.npz").write_bytes(b"partial")
    (out / ".my.tmp").mkdir()
    assert all(r.status == "cached" for r in run_pipeline(cfg, out).stages)
    assert not any(p.exists() for p in left) and (out / ".my.tmp").exists()


def test_a_run_killed_by_sigterm_leaves_no_temp_dir(toy):
    script = textwrap.dedent(f"""
        import time
        import sidkit.pipeline as P
        from sidkit.config import config_from_dict
        from sidkit.stages import Stage

        def slow(out, inputs):
            (out / "partial").write_text("x")
            print("started", flush=True)
            time.sleep(60)

        P.build_stages = lambda cfg: [Stage("data", slow)]
        cfg = config_from_dict({{"data": {{"dataset": {str(toy / "toy")!r}}},
                                "embed": {{"embeddings_file": {str(toy / "emb.npy")!r}}}}})
        P.run_pipeline(cfg, {str(toy / "run")!r})
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "started", p.stderr.read()
        assert len(list((toy / "run").glob(".data.*.tmp"))) == 1
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=30)
    finally:
        p.kill()
    assert rc == 143 and list((toy / "run").iterdir()) == []


# ----------------------------------------------------- config: items, columns, checks
def _csv_data(tmp_path):
    """A CSV with its own column names, no item table; 8 items i0..i7, 6 users."""
    rows = ["uid,iid,ts"]
    for u in range(6):
        for t, i in enumerate(np.random.default_rng(u).permutation(8)[:5]):
            rows.append(f"u{u},i{i},{100 * u + t}")
    (tmp_path / "events.csv").write_text("\n".join(rows) + "\n")
    X = np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)
    np.save(tmp_path / "vec.npy", X)
    return X


def _csv_cfg(tmp_path, **data):
    return config_from_dict({
        "data": {"dataset": str(tmp_path / "events.csv"), "user_core": 2,
                 "columns": {"user_id": "uid", "item_id": "iid", "timestamp": "ts"}, **data},
        "embed": {"embeddings_file": str(tmp_path / "vec.npy")},
        "codes": {"n_levels": 2, "codebook_sizes": [2, 2]},
        "diagnostics": {"perturbation_scales": [0.5], "report": False}})


def test_csv_without_item_table_runs_with_embeddings_file(tmp_path):
    X = _csv_data(tmp_path)
    out = tmp_path / "run"
    res = run_pipeline(_csv_cfg(tmp_path), out)
    assert [r.status for r in res.stages] == ["ran"] * 6
    ids = json.loads((out / "items" / "item_ids.json").read_text())["item_ids"]
    assert ids == [f"i{i}" for i in range(8)]  # the item ids sorted as strings
    assert not (out / "items" / "texts.json").exists()  # no text stage
    from sidkit.types import Embeddings
    np.testing.assert_array_equal(Embeddings.load(out / "embeddings").vectors, X)
    assert Codes.load(out / "codes" / "codes").n_items == 8


def test_data_items_table_gives_the_catalogue(tmp_path):
    _csv_data(tmp_path)
    (tmp_path / "items.csv").write_text("iid,title\n" + "".join(f"i{i},Film {i}\n" for i in (7, 6, 5, 4, 3, 2, 1, 0)))
    out = tmp_path / "run"
    run_pipeline(_csv_cfg(tmp_path, items=str(tmp_path / "items.csv")), out)
    ids = json.loads((out / "items" / "item_ids.json").read_text())["item_ids"]
    assert ids == [f"i{i}" for i in (7, 6, 5, 4, 3, 2, 1, 0)]  # item-table order
    from sidkit.data import ItemTable
    assert ItemTable.load(out / "items").df["title"].tolist()[0] == "Film 7"
    with pytest.raises(DataError, match=r"items file .*nope.csv does not exist"):
        run_pipeline(_csv_cfg(tmp_path, items=str(tmp_path / "nope.csv")), tmp_path / "r2")


def test_csv_without_column_mapping_names_the_config_key(tmp_path):
    _csv_data(tmp_path)
    cfg = _csv_cfg(tmp_path).model_dump()
    cfg["data"]["columns"] = {}
    with pytest.raises(DataError, match=r"no column 'user_id'.*\n.*\[data\] columns = \{ user_id = \"<your column>\" \}"):
        run_pipeline(config_from_dict(cfg), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"unknown column name\(s\) \['user'\]"):
        config_from_dict({"data": {"columns": {"user": "uid"}}})


def test_text_embedding_without_item_text_is_a_clear_error(tmp_path):
    _csv_data(tmp_path)
    cfg = _csv_cfg(tmp_path).model_dump()
    cfg["embed"]["embeddings_file"] = None
    with pytest.raises(DataError, match=r"no item table .*\n  fix: give an item table with \[data\] items"):
        run_pipeline(config_from_dict(cfg), tmp_path / "run")


def test_kcore_error_suggests_a_threshold_that_keeps_data(toy):
    out = toy / "run"
    with pytest.raises(DataError) as e:
        run_pipeline(_cfg(toy, data={"user_core": 1000}), out)
    msg = str(e.value)
    assert "[data] user_core = 1000" in msg and "user_k" not in msg
    best = int(re.search(r"fix: set \[data\] user_core = (\d+) or lower", msg).group(1))
    assert best == 12  # every toy user has 12 interactions
    from sidkit.data import load_dataset
    from sidkit.data.split import kcore
    inter = load_dataset(str(toy / "toy")).interactions
    assert len(kcore(inter, user_k=best)) == 480
    with pytest.raises(DataError, match="user_k=12 or lower"):  # the library names its own keyword
        kcore(inter, user_k=best + 1)
    # both sides: the suggestion keeps data, one more does not
    with pytest.raises(DataError) as e:
        run_pipeline(_cfg(toy, data={"user_core": 1000, "item_core": 1000}), toy / "r2")
    m = re.search(r"set \[data\] user_core = (\d+), item_core = (\d+) or lower", str(e.value))
    u, i = int(m.group(1)), int(m.group(2))
    assert len(kcore(inter, user_k=u, item_k=i)) > 0
    with pytest.raises(DataError):
        kcore(inter, user_k=u + 1, item_k=i + 1)


@pytest.mark.parametrize("device, message", [("gpu", "unknown device 'gpu'"), ("meta", "not supported")])
def test_bad_device_fails_before_any_stage(toy, device, message):
    out = toy / "run"
    r = runner.invoke(app, ["run", "--out", str(out), "--device", device])
    assert r.exit_code == 1 and message in r.output and "fix: set device" in r.output
    assert not out.exists()


def test_cuda_without_cuda_fails_before_any_stage(toy):
    import torch
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ConfigError, match=r"device 'cuda' requested but CUDA is not available\n"
                                          r"  fix: set device \(or --device\) to auto or cpu"):
        run_pipeline(config_from_dict({**_cfg(toy).model_dump(), "device": "cuda"}), toy / "run")
    assert not (toy / "run").exists()


def test_column_mapping_on_a_format_without_columns_is_a_clear_error(toy):
    with pytest.raises(DataError, match=r"unexpected option\(s\) \['columns'\].*\n.*\[data\] columns"):
        run_pipeline(_cfg(toy, data={"columns": {"user_id": "uid"}}), toy / "run")
    assert not (toy / "run" / "data").exists()


def test_cli_diagnose_of_a_run_leaves_the_pipeline_stages_alone(toy):
    out = toy / "run"
    run_pipeline(_cfg(toy, diagnostics={"report": False}), out)
    before = (out / "diagnostics" / "report.json").read_bytes()
    r = runner.invoke(app, ["diagnose", str(out), "--scales", "0,0.1", "--no-monte-carlo"])
    assert r.exit_code == 0, r.output
    assert (out / "diagnose" / "report.html").exists()
    assert (out / "diagnostics" / "report.json").read_bytes() == before
    from sidkit.commands.diagnose import default_out
    assert default_out(out / "codes" / "codes.npz") == out / "diagnose"  # not RUN/codes/diagnostics
    assert default_out(toy / "emb.npy") == toy / "diagnostics"  # outside a run: as before
    res = run_pipeline(_cfg(toy, diagnostics={"report": False}), out)
    assert all(r.status == "cached" for r in res.stages)


def test_data_items_table_renders_the_item_texts(tmp_path):
    """Without embeddings_file the [data] items table gives the texts to embed."""
    from sidkit.pipeline import build_stages
    from sidkit.stages import run_stage

    _csv_data(tmp_path)
    (tmp_path / "items.csv").write_text("iid,title,genre\n" + "".join(f"i{i},Film {i},Drama\n" for i in range(8)))
    cfg = _csv_cfg(tmp_path, items=str(tmp_path / "items.csv")).model_dump()
    cfg["embed"] = {"template": "{title} ({genre})"}
    out = tmp_path / "run"
    for stage in build_stages(config_from_dict(cfg))[:3]:  # data, split, items
        run_stage(stage, out)
    t = json.loads((out / "items" / "texts.json").read_text())
    assert t["item_ids"] == [f"i{i}" for i in range(8)]
    assert t["texts"][:2] == ["Film 0 (Drama)", "Film 1 (Drama)"]
    assert not (out / "items" / "item_ids.json").exists()


def test_codes_key_names_the_balanced_kmeans_version_only_where_it_runs(toy):
    from sidkit.pipeline import _codes_stage

    def params(**codes):
        return _codes_stage(config_from_dict({"codes": codes})).params

    # the balanced Lloyd changed (warm start + change tolerance): its cached codes are stale
    assert params(method="gaoq")["balanced_kmeans"] == 2
    assert params(method="rqkmeans", params={"balanced": True})["balanced_kmeans"] == 2
    # every other tokenizer keeps its key, so its cached codes stay valid
    for method in ("rqkmeans", "hkm", "rqvae", "drq"):
        assert "balanced_kmeans" not in params(method=method)
    assert "balanced_kmeans" not in params(method="rqkmeans", params={"balanced": False})


def test_codes_key_names_the_sizing_rule_only_where_sizes_come_from_it(toy):
    from sidkit.pipeline import _codes_stage

    def params(**codes):
        return _codes_stage(config_from_dict({"codes": codes})).params

    # codes sized by the rule before study 2 are stale: the key changed
    for method in ("rqkmeans", "hkm", "rqvae", "drq", "vq"):
        assert params(method=method)["sizing_rule"] == 2, method
    # explicit sizes, or a tokenizer without codebooks (GAOQ sizes its tree itself): same key
    assert "sizing_rule" not in params(method="rqkmeans", codebook_sizes=[24, 24, 24])
    assert "sizing_rule" not in params(method="vq", params={"codebook_size": 64})
    assert "sizing_rule" not in params(method="gaoq")


def test_data_repeats_key_keeps_or_drops_repeated_pairs_and_the_summary_says_so(tmp_path):
    """[data] repeats: "keep" leaves repeated (user, item) pairs in the data and the summary
    counts them; "first" keeps one interaction per pair (a new data stage, not the cached one)."""
    _csv_data(tmp_path)
    lines = (tmp_path / "events.csv").read_text().splitlines()
    first_of = {line.split(",")[0]: line.split(",")[1] for line in reversed(lines[1:])}
    with open(tmp_path / "events.csv", "a") as f:     # u0 and u1 consume their first item again, later
        f.write(f"u0,{first_of['u0']},900\nu0,{first_of['u0']},901\nu1,{first_of['u1']},950\n")
    out = tmp_path / "run"
    keep = run_pipeline(_csv_cfg(tmp_path), out).summary("data")
    assert keep["repeats"] == "keep" and keep["repeated_pairs"] == keep["repeated_pairs_source"] == 3
    first = run_pipeline(_csv_cfg(tmp_path, repeats="first"), out).summary("data")
    assert first["repeated_pairs"] == 0 and first["repeated_pairs_source"] == keep["repeated_pairs_source"]
    assert first["interactions"] == keep["interactions"] - keep["repeated_pairs"]
    from sidkit.data import format_info
    assert 'only the first of each pair kept: [data] repeats = "first"' in format_info(first)
    with pytest.raises(Exception, match="repeats"):
        _csv_cfg(tmp_path, repeats="drop")
