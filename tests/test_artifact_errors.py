"""Damaged or edited artifacts: one ArtifactError/DataError naming the file, never a
BadZipFile / JSONDecodeError / KeyError / TypeError / numpy's allow_pickle advice, and
through the CLI exit code 1 with no traceback (issue 8, item 5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sidkit.cli import app
from sidkit.errors import ArtifactError, DataError, SidkitError
from sidkit.io import load_npy, load_npz, read_json, save_npy
from sidkit.tokenizers import RQKMeans, Tokenizer
from sidkit.types import Codes, Embeddings

runner = CliRunner()


# ----------------------------------------------------------------- corruptions
def truncate(p: Path) -> None:
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


def garbage(p: Path) -> None:
    p.write_bytes(bytes(range(256)) * 4)


def empty(p: Path) -> None:
    p.write_bytes(b"")


def remove(p: Path) -> None:
    p.unlink()


def object_npy(p: Path) -> None:
    np.save(p, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def npz_under_npy(p: Path) -> None:
    with open(p, "wb") as f:
        np.savez(f, x=np.zeros(3))


def npy_under_npz(p: Path) -> None:
    with open(p, "wb") as f:
        np.save(f, np.zeros(3))


def object_npz(p: Path) -> None:
    with open(p, "wb") as f:
        np.savez(f, codes=np.array([None, {"a": 1}], dtype=object))


def edit_json(**changes):
    """Set (value) or delete (None) top-level keys; ``params.x`` edits a nested key."""
    def f(p: Path) -> None:
        d = json.loads(p.read_text())
        for k, v in changes.items():
            obj, key = (d["params"], k[7:]) if k.startswith("params_") else (d, k)
            if v is None:
                obj.pop(key, None)
            else:
                obj[key] = v
        p.write_text(json.dumps(d))
    f.__name__ = "edit_json(" + ",".join(f"{k}={v!r}" for k, v in changes.items()) + ")"
    return f


FILE_DAMAGE = [truncate, garbage, empty, remove]


def check_error(exc: BaseException, path: Path) -> None:
    assert isinstance(exc, SidkitError), f"{type(exc).__name__}: {exc}"
    msg = str(exc)
    assert path.name in msg, msg
    assert "allow_pickle" not in msg and "fix:" in msg, msg


# -------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(4, 6)) * 3)[rng.integers(0, 4, 80)] + rng.normal(size=(80, 6))
    X = X.astype(np.float32)
    tok = RQKMeans(codebook_sizes=[4, 4], n_iter=5, device="cpu")
    codes = tok.fit_encode(X)
    return X, tok, codes


@pytest.fixture()
def run(tmp_path, fitted):
    """A run directory as the pipeline writes it (embeddings, codes, tokenizer)."""
    X, tok, codes = fitted
    ids = np.array([f"i{k}" for k in range(len(X))])
    r = tmp_path / "run"
    Embeddings(X, ids).save(r / "embeddings")
    codes.replace(item_ids=ids).save(r / "codes" / "codes")
    tok.save(r / "codes" / "tokenizer")
    return r


# -------------------------------------------------------------- plain loaders
@pytest.mark.parametrize("damage", FILE_DAMAGE + [object_npy, npz_under_npy],
                         ids=lambda f: f.__name__)
def test_load_npy_damaged(tmp_path, damage):
    p = tmp_path / "x.npy"
    save_npy(p, np.arange(12, dtype=np.float32).reshape(3, 4))
    damage(p)
    with pytest.raises(ArtifactError) as e:
        load_npy(p)
    check_error(e.value, p)


def test_load_npy_object_array_says_so(tmp_path):
    p = tmp_path / "x.npy"
    object_npy(p)
    with pytest.raises(ArtifactError, match="object-dtype"):
        load_npy(p)


@pytest.mark.parametrize("damage", FILE_DAMAGE + [object_npz, npy_under_npz],
                         ids=lambda f: f.__name__)
def test_load_npz_damaged(tmp_path, damage):
    p = tmp_path / "x.npz"
    with open(p, "wb") as f:
        np.savez(f, codes=np.zeros((4, 2), np.int64))
    damage(p)
    with pytest.raises(ArtifactError) as e:
        load_npz(p)
    check_error(e.value, p)


@pytest.mark.parametrize("damage", FILE_DAMAGE, ids=lambda f: f.__name__)
def test_read_json_damaged(tmp_path, damage):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"a": [1, 2, 3], "b": "text"}))
    damage(p)
    with pytest.raises(ArtifactError) as e:
        read_json(p)
    check_error(e.value, p)


# ----------------------------------------------------------------- Codes.load
CODES_DAMAGE = (
    [("codes.npz", f) for f in FILE_DAMAGE + [object_npz]]
    + [("codes.json", f) for f in FILE_DAMAGE]
    + [("codes.json", edit_json(codebook_sizes=None)),
       ("codes.json", edit_json(codebook_sizes="4,4")),
       ("codes.json", edit_json(codebook_sizes=[4.5, 4])),
       ("codes.json", edit_json(codebook_sizes=[2, 2])),   # tokens 2, 3 out of range
       ("codes.json", edit_json(codebook_sizes=[4])),      # one size for two levels
       ("codes.json", edit_json(params=[1, 2])),
       ("codes.json", edit_json(collision_rule=3)),
       ("codes.json", edit_json(collision_rule="sometimes")),
       ("codes.json", edit_json(schema_version=99))]
)


@pytest.mark.parametrize("fname, damage", CODES_DAMAGE,
                         ids=[f"{n}-{f.__name__}" for n, f in CODES_DAMAGE])
def test_codes_load_damaged(run, fname, damage):
    target = run / "codes" / fname
    damage(target)
    with pytest.raises((ArtifactError, DataError)) as e:
        Codes.load(run / "codes" / "codes")
    check_error(e.value, target)


def test_codes_npz_without_codes_array(run):
    p = run / "codes" / "codes.npz"
    with open(p, "wb") as f:
        np.savez(f, lengths=np.full(80, 3))
    with pytest.raises(ArtifactError, match=r"codes\.npz lacks array\(s\) \['codes'\]"):
        Codes.load(p)


def test_embeddings_load_damaged(run):
    d = run / "embeddings"
    (d / "embeddings.json").write_text(json.dumps({"artifact": "Embeddings"}))
    with pytest.raises(ArtifactError, match="embeddings.json: key 'item_ids'") as e:
        Embeddings.load(d)
    check_error(e.value, d / "embeddings.json")
    shutil.rmtree(d)
    Embeddings(np.zeros((3, 2)), ["a", "b", "c"]).save(d)
    save_npy(d / "embeddings.npy", np.zeros((5, 2), np.float32))  # 5 rows, 3 ids
    with pytest.raises(ArtifactError, match="5 rows but there are 3 item ids"):
        Embeddings.load(d)


# ------------------------------------------------------------- Tokenizer.load
def drop_tensor(name):
    def f(p: Path) -> None:
        from safetensors.numpy import load_file, save_file
        t = load_file(str(p))
        del t[name]
        save_file(t, str(p))
    f.__name__ = f"drop_tensor({name})"
    return f


def reshape_tensor(name, fn):
    def f(p: Path) -> None:
        from safetensors.numpy import load_file, save_file
        t = load_file(str(p))
        t[name] = np.ascontiguousarray(fn(t[name]))
        save_file(t, str(p))
    f.__name__ = f"reshape_tensor({name})"
    return f


TOKENIZER_DAMAGE = (
    [("tokenizer.json", f) for f in FILE_DAMAGE]
    + [("state.safetensors", f) for f in FILE_DAMAGE]
    + [("tokenizer.json", edit_json(name="no-such-tokenizer")),
       ("tokenizer.json", edit_json(name=None)),
       ("tokenizer.json", edit_json(params="n_iter=5")),
       ("tokenizer.json", edit_json(params_typo_key=3)),
       ("tokenizer.json", edit_json(params_n_levels=-1)),
       ("tokenizer.json", edit_json(params_n_iter="20")),
       ("tokenizer.json", edit_json(params_n_init=1.5)),
       ("tokenizer.json", edit_json(params_codebook_sizes=[4, 1])),
       ("tokenizer.json", edit_json(params_codebook_sizes=[4, 4], params_n_levels=3)),
       ("tokenizer.json", edit_json(params_device="quantum")),
       ("tokenizer.json", edit_json(extra_state=[1])),
       ("tokenizer.json", edit_json(schema_version=None)),
       ("state.safetensors", drop_tensor("codebooks_")),
       ("state.safetensors", reshape_tensor("codebooks_", lambda a: a[:, :2, :])),
       ("state.safetensors", reshape_tensor("codebooks_", lambda a: a.reshape(-1, a.shape[-1]))),
       ("state.safetensors", reshape_tensor("codebook_sizes_", lambda a: a[:1])),
       ("state.safetensors", reshape_tensor("catalogue_sids_", lambda a: a[:, :1]))]
)


@pytest.mark.parametrize("fname, damage", TOKENIZER_DAMAGE,
                         ids=[f"{n}-{f.__name__}" for n, f in TOKENIZER_DAMAGE])
def test_tokenizer_load_damaged(run, fname, damage):
    tok_dir = run / "codes" / "tokenizer"
    damage(tok_dir / fname)
    with pytest.raises(ArtifactError) as e:
        Tokenizer.load(tok_dir)
    msg = str(e.value)
    assert "tokenizer" in msg and "fix:" in msg and "allow_pickle" not in msg, msg
    # the message names the file, or (a state that does not fit) the directory
    assert fname in msg or ("inconsistent" in msg and str(tok_dir) in msg), msg


@pytest.mark.parametrize("edit, key", [(edit_json(params_n_levels=-1), "n_levels"),
                                       (edit_json(params_typo_key=3), "typo_key"),
                                       (edit_json(params_n_iter="20"), "n_iter")])
def test_edited_params_name_the_key(run, edit, key):
    tok_dir = run / "codes" / "tokenizer"
    edit(tok_dir / "tokenizer.json")
    with pytest.raises(ArtifactError, match=key) as e:
        Tokenizer.load(tok_dir)
    assert "tokenizer.json" in str(e.value)


def test_tokenizer_load_not_a_directory(tmp_path):
    with pytest.raises(ArtifactError, match="not a directory"):
        Tokenizer.load(tmp_path / "nope")


def test_intact_run_still_loads(run, fitted):
    X, tok, _ = fitted
    loaded = Tokenizer.load(run / "codes" / "tokenizer")
    np.testing.assert_array_equal(loaded.encode(X).codes, tok.encode(X).codes)
    assert Codes.load(run / "codes" / "codes").n_items == len(X)


# ------------------------------------------------------------------------- CLI
def _cli_fails_cleanly(args, must_name: str):
    r = runner.invoke(app, [str(a) for a in args])
    assert isinstance(r.exception, SystemExit), repr(r.exception)  # no uncaught exception
    assert r.exit_code == 1, r.output
    assert "Traceback" not in r.output, r.output
    assert "error:" in r.output and must_name in r.output, r.output
    assert "allow_pickle" not in r.output
    return r.output


DIAGNOSE_DAMAGE = (
    [("codes/codes.npz", f) for f in (truncate, garbage, empty, object_npz)]
    + [("codes/codes.json", f) for f in (truncate, garbage, empty, edit_json(codebook_sizes=None),
                                         edit_json(codebook_sizes="x"))]
    + [("embeddings/embeddings.npy", f) for f in (truncate, garbage, empty, object_npy)]
    + [("codes/tokenizer/tokenizer.json", f) for f in (truncate, remove, edit_json(name="nope"),
                                                        edit_json(params_n_levels=-1),
                                                        edit_json(params_typo_key=1))]
    + [("codes/tokenizer/state.safetensors", f) for f in (truncate, garbage, remove,
                                                           drop_tensor("codebooks_"))]
)


@pytest.mark.parametrize("rel, damage", DIAGNOSE_DAMAGE,
                         ids=[f"{r}-{f.__name__}" for r, f in DIAGNOSE_DAMAGE])
def test_cli_diagnose_damaged_run(run, rel, damage):
    damage(run / rel)
    _cli_fails_cleanly(["diagnose", run, "--no-monte-carlo", "--scales", "0.1"],
                       Path(rel).name)


def test_cli_diagnose_intact_run_works(run):
    r = runner.invoke(app, ["diagnose", str(run), "--no-monte-carlo", "--scales", "0.1"])
    assert r.exit_code == 0, r.output
    assert (run / "diagnostics" / "report.json").exists()


@pytest.mark.parametrize("damage", [truncate, garbage, empty, object_npy, npz_under_npy],
                         ids=lambda f: f.__name__)
def test_cli_tokenize_damaged_npy(tmp_path, fitted, damage):
    p = tmp_path / "emb.npy"
    save_npy(p, fitted[0])
    damage(p)
    _cli_fails_cleanly(["tokenize", p, "--out", tmp_path / "out", "--sizes", "4,4"], "emb.npy")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rel, damage", [("embeddings.npy", truncate), ("embeddings.npy", remove),
                                         ("embeddings.json", garbage),
                                         ("embeddings.json", edit_json(item_ids=None))],
                         ids=lambda x: getattr(x, "__name__", str(x)))
def test_cli_tokenize_damaged_embeddings_dir(run, tmp_path, rel, damage):
    damage(run / "embeddings" / rel)
    _cli_fails_cleanly(["tokenize", run / "embeddings", "--out", tmp_path / "out", "--sizes", "4,4"],
                       rel if damage is not remove else "embeddings")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ sidkit run
@pytest.fixture()
def toy_config(tmp_path):
    """A 30-item RecBole data set with an embeddings file; returns a config writer."""
    rng = np.random.default_rng(0)
    d = tmp_path / "toy"
    d.mkdir()
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(20):
        rows += [f"u{u}\ti{i}\t4\t{1000 + 10 * t + u}"
                 for t, i in enumerate(rng.choice(30, size=8, replace=False))]
    (d / "toy.inter").write_text("\n".join(rows) + "\n")
    items = ["item_id:token\tmovie_title:token_seq"] + [f"i{i}\tMovie {i}" for i in range(30)]
    (d / "toy.item").write_text("\n".join(items) + "\n")
    save_npy(tmp_path / "emb.npy", rng.normal(size=(30, 8)).astype(np.float32))

    def write(extra_codes: str = "", emb: Path | None = None) -> Path:
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[data]\ndataset = "{d}"\nuser_core = 2\n'
                       f'[embed]\nembeddings_file = "{emb or tmp_path / "emb.npy"}"\n'
                       f'[codes]\ncodebook_sizes = [3, 3]\n{extra_codes}')
        return cfg

    return write


@pytest.mark.parametrize("damage", [truncate, garbage, object_npy], ids=lambda f: f.__name__)
def test_cli_run_damaged_embeddings_file(toy_config, tmp_path, damage):
    damage(tmp_path / "emb.npy")
    _cli_fails_cleanly(["run", toy_config(), "--out", tmp_path / "run"], "emb.npy")


def test_cli_run_bad_tokenizer_parameter(toy_config, tmp_path):
    out = _cli_fails_cleanly(["run", toy_config("params = { n_init = 0 }\n"), "--out",
                              tmp_path / "run"], "n_init=0")
    assert "must be an integer >= 1" in out
    assert not (tmp_path / "run" / "data").exists()  # checked before any stage ran


@pytest.mark.parametrize("damage", [truncate, garbage], ids=lambda f: f.__name__)
def test_split_parquet_damaged(tmp_path, damage):
    import pandas as pd

    from sidkit.data.containers import Split

    df = pd.DataFrame({"user_id": ["u0"] * 3, "item_id": ["a", "b", "c"], "timestamp": [1, 2, 3],
                       "position": [0, 1, 2], "role": ["train", "valid", "test"]})
    Split(df).save(tmp_path / "split")
    damage(tmp_path / "split" / "split.parquet")
    with pytest.raises(ArtifactError) as e:
        Split.load(tmp_path / "split")
    check_error(e.value, tmp_path / "split" / "split.parquet")


# ------------------------------------------------- trained recommenders and checkpoints
def _trained_models(tmp_path):
    """A popularity model and a tiny causal SID model (with its SID token data) saved."""
    import pandas as pd

    from sidkit.data import Interactions, leave_one_out
    from sidkit.eval import SequenceData
    from sidkit.models import CausalSID, Popularity

    rows = [(f"u{u}", f"i{(u + t) % 30:02d}", t) for u in range(30) for t in range(6)]
    data = SequenceData.from_split(leave_one_out(Interactions(pd.DataFrame(
        rows, columns=["user_id", "item_id", "timestamp"]))))
    i = np.arange(30)
    codes = Codes(np.stack([i // 6, i % 6], 1), (5, 6), item_ids=np.array([f"i{k:02d}" for k in i]))
    pop = Popularity().fit(data).save(tmp_path / "pop")
    causal = CausalSID(hidden=8, n_layers=1, n_heads=1, max_len=4).fit(
        data, codes=codes, train={"epochs": 1, "batch_size": 16, "warmup_steps": 0}, seed=0, device="cpu",
        progress=False, checkpoint_dir=tmp_path / "ckpt")
    causal.save(tmp_path / "causal")
    return data, tmp_path / "pop", tmp_path / "causal"


@pytest.mark.parametrize("damage", [truncate, garbage, empty], ids=lambda f: f.__name__)
def test_damaged_recommender_weights_name_the_file(tmp_path, damage):
    from sidkit.models import Recommender

    _, pop, causal = _trained_models(tmp_path)
    for d in (pop, causal):
        damage(d / "weights.safetensors")
        with pytest.raises(ArtifactError, match=r"weights\.safetensors (is empty|is not a readable)") as e:
            Recommender.load(d)
        assert "retrain" in e.value.fix


def test_weights_of_another_model_are_an_artifact_error(tmp_path):
    from sidkit.models import Recommender

    _, pop, causal = _trained_models(tmp_path)
    (tmp_path / "w").mkdir()
    shutil.copy(pop / "weights.safetensors", tmp_path / "w" / "pop.safetensors")
    shutil.copy(causal / "weights.safetensors", pop / "weights.safetensors")   # valid files, wrong tensors
    shutil.copy(tmp_path / "w" / "pop.safetensors", causal / "weights.safetensors")
    with pytest.raises(ArtifactError, match=r"weights\.safetensors does not fit its model\.json \(KeyError"):
        Recommender.load(pop)
    with pytest.raises(ArtifactError, match="holds no codes"):
        Recommender.load(causal)


@pytest.mark.parametrize("damage", [truncate, garbage, empty], ids=lambda f: f.__name__)
def test_damaged_checkpoint_names_the_file_and_the_fix(tmp_path, damage):
    from sidkit.training import load_checkpoint
    from sidkit.io import read_json as rj

    _trained_models(tmp_path)
    ck = tmp_path / "ckpt"
    fingerprint = rj(ck / "state.json")["fingerprint"]
    for name in ("weights.safetensors", "optim.safetensors"):
        shutil.copytree(ck, tmp_path / "copy", dirs_exist_ok=True)
        damage(tmp_path / "copy" / name)
        with pytest.raises(ArtifactError, match=name.replace(".", r"\.")) as e:
            load_checkpoint(tmp_path / "copy", fingerprint)
        assert "--force" in e.value.fix
        shutil.rmtree(tmp_path / "copy")


@pytest.mark.parametrize("damage", [truncate, empty], ids=lambda f: f.__name__)
def test_cli_evaluate_damaged_weights_is_one_clear_error(tmp_path, damage):
    """`sidkit evaluate` on a run whose weights were cut: exit 1, the file named, no traceback."""
    from test_train_cli import _toml
    from _training import write_tiny_interactions

    write_tiny_interactions(tmp_path)
    out = tmp_path / "run"
    assert runner.invoke(app, ["train", _toml(tmp_path, "popularity"), "--out", str(out)]).exit_code == 0
    w = out / "recommender" / "models" / "popularity" / "seed-0" / "weights.safetensors"
    damage(w)
    r = runner.invoke(app, ["evaluate", str(out)])
    assert r.exit_code == 1 and str(w) in r.output and "Traceback" not in r.output
    assert "SafetensorError" not in r.output.split("(")[0]
