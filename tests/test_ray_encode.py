"""Catalogue encoding on Ray Data equals the in-process encoder, row for row (issue 12).

The Ray tests share one local Ray session (``ray.init(num_cpus=2)``, module scope: Ray's
start-up takes seconds) and skip when ray[data] is not installed or when Ray itself cannot
start here (``RayStartError``, raised by ``ray_session`` only for a failed ``ray.init``;
any other error fails them).  Every Ray Data job costs
10-30 s on the shared 2-core machine, so the fit-on-a-sample CLI run and the text run are
marked slow (``pytest -m slow tests/test_ray_encode.py``).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sidkit.errors import ArtifactError, ConfigError, DataError
from sidkit.scale.ray_encode import (
    _NEW, SID_PREFIX, RayStartError, encode_in_process, encode_parquet, new_item_base, prefix_bucket,
    rank_new_items, read_sids, require_ray, write_embeddings_parquet)
from sidkit.tokenizers import RQKMeans
from sidkit.tokenizers.base import Tokenizer


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module (started, with retries, by ``ray_session``)."""
    pytest.importorskip("ray", reason="ray[data] is not installed: pip install 'sidkit[ray]'")
    pytest.importorskip("ray.data", reason="ray[data] is not installed: pip install 'sidkit[ray]'")
    from sidkit.scale.ray_encode import ray_session

    session = ray_session(num_cpus=2)
    try:
        ray = session.__enter__()
    except RayStartError as e:  # ray.init itself failed (raylet, GCS); a sidkit error is not skipped
        pytest.skip(f"a local Ray could not start on this machine ({str(e)[:300]})")
    try:
        yield ray
    finally:
        session.__exit__(None, None, None)


def _clustered(n: int, d: int = 16, k: int = 6, seed: int = 0) -> np.ndarray:
    r = np.random.default_rng(seed)
    X = r.normal(size=(k, d))[r.integers(0, k, n)] + 0.3 * r.normal(size=(n, d))
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


def _sids(df, L: int) -> np.ndarray:
    return df[[f"{SID_PREFIX}{l}" for l in range(L)]].to_numpy()


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    """300 items; a 2-level RQ-KMeans (4 x 4 codewords + counter) fitted on 150 of them,
    so the other 150 are new items sharing the 16 prefixes with catalogue items."""
    d = tmp_path_factory.mktemp("cat")
    X = _clustered(300)
    ids = np.arange(1000, 1300)
    tok = RQKMeans(codebook_sizes=[4, 4], random_state=0).fit(X[::2])
    tok.save(d / "codes" / "tokenizer")
    perm = np.random.default_rng(1).permutation(300)  # file order is not id order
    write_embeddings_parquet(d / "items.parquet", ids[perm], X[perm], row_group_size=50)
    return {"dir": d, "X": X, "ids": ids, "tok": Tokenizer.load(d / "codes" / "tokenizer")}


# ------------------------------------------------------------- no Ray needed
def test_rank_new_items_numbers_each_prefix_in_id_order():
    # prefix (0, 1) holds 3 catalogue items (tokens 0..2): its new items 2, 5, 7 get 3, 4, 5
    tbl = pa.table({"item_id": [5, 2, 9, 7], "sid_0": [0, 0, 1, 0], "sid_1": [1, 1, 0, 1],
                    "sid_2": [9, 9, 9, 9], _NEW: [True] * 4, "_sidkit_base": [3, 3, 0, 3]})
    out = rank_new_items(tbl, "item_id", 3)
    assert out.column_names == ["item_id", "sid_0", "sid_1", "sid_2"]
    assert out.column("item_id").to_pylist() == [5, 2, 9, 7]
    assert out.column("sid_2").to_pylist() == [4, 3, 0, 5]
    # string ids rank in string order; prefixes differing in any level are separate groups
    tbl = pa.table({"item_id": ["m10", "m02", "m07", "m01"], "sid_0": [2, 2, 2, 2],
                    "sid_1": [0, 0, 1, 0], "sid_2": [0] * 4, _NEW: [True] * 4,
                    "_sidkit_base": [0, 0, 1, 0]})
    assert rank_new_items(tbl, "item_id", 3).column("sid_2").to_pylist() == [2, 1, 1, 0]


def test_prefix_bucket_keeps_a_prefix_together_and_spreads_prefixes():
    sem = np.stack(np.meshgrid(np.arange(64), np.arange(64), indexing="ij"), -1).reshape(-1, 2)
    b = prefix_bucket(sem, 8)
    assert b.min() >= 0 and b.max() < 8
    assert np.array_equal(prefix_bucket(sem[::-1], 8), b[::-1])   # a function of the row alone
    counts = np.bincount(b, minlength=8)
    assert counts.min() > 0.8 * 512 and counts.max() < 1.2 * 512  # 4,096 prefixes, ~512 each
    # no Python hash() inside: the same buckets on every machine and run, namely those of
    # an independent plain-Python SplitMix64 (checked against its published outputs)
    rs = np.random.default_rng(0)
    rows = np.vstack([[0, 0], [1, 2], [255, 255], rs.integers(0, 2**31, size=(200, 2))])
    for n in (1, 7, 1000, 2**40 + 3):
        assert prefix_bucket(rows, n).tolist() == [_splitmix_prefix(r) % n for r in rows.tolist()]
    three = rs.integers(0, 4096, size=(50, 3))
    assert prefix_bucket(three, 97).tolist() == [_splitmix_prefix(r) % 97 for r in three.tolist()]


_M64 = 2**64 - 1


def _splitmix64(x: int) -> int:
    """One SplitMix64 output from state ``x`` (Vigna, splitmix64.c: the state advances by
    the golden gamma, then the mix), plain Python integers mod 2**64."""
    z = (x + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _splitmix_prefix(tokens) -> int:
    h = 0
    for t in tokens:
        h = _splitmix64(h ^ int(t))
    return h


def test_the_reference_splitmix64_gives_the_published_outputs():
    # the first five outputs of splitmix64.c seeded with 1234567, and the first with seed 0
    state, out = 1234567, []
    for _ in range(5):
        out.append(_splitmix64(state))
        state = (state + 0x9E3779B97F4A7C15) & _M64
    assert out == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                   4593380528125082431, 16408922859458223821]
    assert _splitmix64(0) == 0xE220A8397B1DCDAF


class _FakeRay:
    """``ray.init`` raising the given exceptions in turn (then succeeding)."""

    def __init__(self, *errors):
        self.errors, self.inits, self.shutdowns = list(errors), 0, 0

    def is_initialized(self):
        return False

    def init(self, **kw):
        self.inits += 1
        if self.errors:
            raise self.errors.pop(0)

    def shutdown(self):
        self.shutdowns += 1


@pytest.mark.parametrize("errors, starts", [
    ((ConnectionError("GCS unreachable"),), False),
    ((RuntimeError("raylet died"),), False),
    ((Exception("The current node timed out during startup"),) * 3, False),
    ((Exception("The current node timed out during startup"),) * 2, True),   # retried, then up
])
def test_ray_session_reports_a_failed_start_as_ray_start_error(monkeypatch, errors, starts):
    """The one failure the Ray tests may skip on: ``ray.init`` failing (after the retries)."""
    import sidkit.scale.ray_encode as re_mod

    fake = _FakeRay(*errors)
    monkeypatch.setattr(re_mod, "require_ray", lambda: fake)
    if starts:
        with re_mod.ray_session(num_cpus=1) as ray:
            assert ray is fake and fake.inits == 3
        return
    with pytest.raises(RayStartError, match="cannot start") as e:
        with re_mod.ray_session(num_cpus=1):
            pass
    assert isinstance(e.value, ConfigError) and e.value.fix


def test_ray_session_does_not_hide_other_errors_as_a_start_failure(monkeypatch):
    """A programming error (here a bad keyword reaching ray.init) is raised as it is, so
    the module's tests fail instead of skipping."""
    import sidkit.scale.ray_encode as re_mod

    fake = _FakeRay(TypeError("init() got an unexpected keyword argument"))
    monkeypatch.setattr(re_mod, "require_ray", lambda: fake)
    with pytest.raises(TypeError):
        with re_mod.ray_session(num_cpus=1):
            pass
    assert not issubclass(TypeError, RayStartError)


def test_new_item_base_marks_exactly_the_items_outside_the_catalogue(catalogue):
    tok, X = catalogue["tok"], catalogue["X"]
    codes = tok.encode(X)
    new, base = new_item_base(tok, codes)
    assert not new[::2].any()  # the fitted half
    # a new item's last token is count + rank; count is what is left after the rank
    assert (codes.codes[new, -1] >= base[new]).all() and (codes.codes[~new, -1] < base[~new]).all()
    lone = tok.encode(X[1:2])  # encoded alone, a new item gets the first free number
    assert lone.codes[0, -1] == new_item_base(tok, lone)[1][0]


def test_require_ray_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"sidkit\[ray\]"):
        require_ray()


@pytest.mark.parametrize("case", ["no_codes", "missing_column", "wrong_dim", "text_not_string",
                                  "output_exists", "overwrite_foreign", "no_input"])
def test_bad_input_fails_before_ray_and_leaves_no_output(catalogue, tmp_path, case):
    cat = catalogue["dir"]
    codes, inp, out = cat / "codes", cat / "items.parquet", tmp_path / "sids"
    kw: dict = {}
    if case == "no_codes":
        codes = tmp_path / "nowhere"
        err, msg = ArtifactError, "no saved tokenizer"
    elif case == "missing_column":
        kw["column"] = "emb"
        err, msg = DataError, "no column 'emb'"
    elif case == "wrong_dim":
        inp = tmp_path / "wide.parquet"
        write_embeddings_parquet(inp, np.arange(3), np.zeros((3, 8), np.float32))
        err, msg = DataError, "8 dimensions but the tokenizer was fitted on 16"
    elif case == "text_not_string":
        kw["text_column"] = "item_id"
        err, msg = DataError, "not string"
    elif case == "output_exists":
        out.mkdir()
        (out / "keep.txt").write_text("x")
        err, msg = DataError, "already exists"
    elif case == "overwrite_foreign":      # --overwrite never replaces a folder sidkit did not write
        out.mkdir()
        (out / "keep.txt").write_text("x")
        (out / "_sidkit_encode.json").write_text("{}")
        kw["overwrite"] = True
        err, msg = ArtifactError, r"not written by `sidkit encode-ray` \(it holds \['keep.txt'\]\)"
    else:
        inp = tmp_path / "missing.parquet"
        err, msg = DataError, "does not exist"
    with pytest.raises(err, match=msg):
        encode_parquet(codes, inp, out, **kw)
    assert (out.exists() and (out / "keep.txt").read_text() == "x") == (case in ("output_exists",
                                                                                 "overwrite_foreign"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_overwrite_replaces_an_earlier_output_only_when_the_run_succeeds(tmp_path):
    from sidkit.scale.ray_encode import SUMMARY_FILE, _staging

    out = tmp_path / "sids"
    out.mkdir()
    (out / SUMMARY_FILE).write_text("{}")
    (out / "part-0.parquet").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with _staging(out, overwrite=True) as tmp:
            (tmp / "out").mkdir()
            raise RuntimeError("a failed job")
    assert (out / "part-0.parquet").read_bytes() == b"old"          # untouched by a failure
    with _staging(out, overwrite=True) as tmp:
        (tmp / "out").mkdir()
        (tmp / "out" / "part-1.parquet").write_bytes(b"new")
    assert sorted(p.name for p in out.iterdir()) == ["part-1.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sids"]   # no temporary folder left


# ------------------------------------------------------------- on Ray
def test_parquet_footer_readers_follow_the_cluster_size(ray_local, monkeypatch):
    """Ray Data starts 32 Parquet footer-reading actors by default (~115 MB each); on this
    2-CPU machine they made encode-ray's peak memory grow with the number of files
    (benchmarks/number_ray.py: 4.3 GB -> 2.3 GB at 10M items).  sidkit asks for one per
    CPU, unless the user chose a number."""
    from sidkit.scale.ray_encode import FOOTER_ACTORS_ENV, _configure_data_context

    monkeypatch.delenv(FOOTER_ACTORS_ENV, raising=False)
    _configure_data_context(ray_local)
    assert os.environ[FOOTER_ACTORS_ENV] == "2"
    monkeypatch.setenv(FOOTER_ACTORS_ENV, "5")
    _configure_data_context(ray_local)
    assert os.environ[FOOTER_ACTORS_ENV] == "5"


@pytest.mark.parametrize("rows_per_task", [1_000_000, 40])
def test_ray_encode_equals_in_process_row_for_row(ray_local, catalogue, tmp_path, rows_per_task):
    """Pass 2 in one task each way, and split over chunks of pass 1's files and 4 buckets."""
    c = catalogue
    out = tmp_path / "sids"
    s = encode_parquet(c["dir"] / "codes", c["dir"] / "items.parquet", out, batch_size=32,
                       rows_per_task=rows_per_task)
    assert s["n_buckets"] == (1 if rows_per_task > 300 else 4)
    df = read_sids(out)
    ref = encode_in_process(c["tok"], c["ids"], c["X"])
    assert df["item_id"].tolist() == c["ids"].tolist()
    assert np.array_equal(_sids(df, 3), ref)
    assert s["n_items"] == 300 and s["n_new"] == 150
    # the fitted half keeps its fit-time SIDs; every SID names one item
    assert np.array_equal(_sids(df, 3)[::2], c["tok"].encode(c["X"][::2]).codes)
    assert len({tuple(r) for r in _sids(df, 3)}) == 300
    # batch-local numbering would have handed out the same SID twice: pass 2 is needed
    naive = np.concatenate([c["tok"].encode(c["X"][i:i + 32]).codes for i in range(0, 300, 32)])
    assert len({tuple(r) for r in naive}) < 300
    meta = json.loads((out / "_sidkit_encode.json").read_text())
    assert meta["columns"] == ["item_id", "sid_0", "sid_1", "sid_2"]


def test_pass2_split_over_row_groups_and_buckets_equals_one_rank(ray_local, tmp_path):
    """Pass 2 on a hand-made pass-1 output (3 files of 2-3 row groups, 70 catalogue and
    110 new rows over 12 prefixes): chunks of 25 rows, 5 buckets -- the same table as
    numbering every new item in one call, with catalogue rows copied as they are."""
    from sidkit.scale.ray_encode import _BASE, _disambiguate

    r = np.random.default_rng(0)
    n = 180
    new = r.permutation(np.r_[np.zeros(70, bool), np.ones(110, bool)])
    tbl = pa.table({"item_id": r.permutation(n).astype(np.int64),
                    "sid_0": r.integers(0, 3, n), "sid_1": r.integers(0, 4, n),
                    "sid_2": np.where(new, 0, r.integers(0, 2, n)), _NEW: new,
                    _BASE: r.integers(0, 3, n)})
    stage1 = tmp_path / "work" / "stage1"
    stage1.mkdir(parents=True)
    for f, (a, b) in enumerate([(0, 50), (50, 120), (120, 180)]):
        pq.write_table(tbl.slice(a, b - a), stage1 / f"part-{f}.parquet", row_group_size=25)
    s = _disambiguate(ray_local, stage1, tmp_path / "work" / "out", "item_id", 3, rows_per_task=25)
    assert (s["n_items"], s["n_new"], s["n_buckets"]) == (180, 110, 5)
    assert s["n_chunks"] == 8   # 2 + 3 + 3 row groups of at most 25 rows, one per chunk
    got = pq.read_table(tmp_path / "work" / "out").sort_by("item_id")
    keep = ["item_id", "sid_0", "sid_1", "sid_2"]
    cat = tbl.filter(pc.invert(tbl.column(_NEW))).select(keep)
    want = pa.concat_tables([cat, rank_new_items(tbl.filter(tbl.column(_NEW)), "item_id", 3)])
    assert got.select(keep).equals(want.sort_by("item_id"))
    assert not (tmp_path / "work" / "buckets").exists()   # its scratch is gone


def test_bad_row_in_a_worker_fails_clearly_and_leaves_no_output(ray_local, catalogue, tmp_path):
    inp = tmp_path / "ragged.parquet"
    emb = [list(map(float, row)) for row in catalogue["X"][:40]]
    emb[17] = emb[17][:5]
    pq.write_table(pa.table({"item_id": np.arange(40), "embedding": emb}), inp, row_group_size=10)
    out = tmp_path / "sids"
    with pytest.raises(DataError, match="item 17 has an embedding of 5 values but 16"):
        encode_parquet(catalogue["dir"] / "codes", inp, out, batch_size=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ragged.parquet"]


@pytest.mark.slow  # ~50 s on the shared 2-core machine: two Ray jobs
def test_cli_fit_sample_then_encode(ray_local, catalogue, tmp_path):
    from typer.testing import CliRunner

    from sidkit.cli import app

    codes, out = tmp_path / "codes", tmp_path / "sids"
    res = CliRunner().invoke(app, ["encode-ray", "--codes", str(codes), "--input",
                                   str(catalogue["dir"] / "items.parquet"), "--output", str(out),
                                   "--fit-sample", "120", "--sizes", "4,4", "--batch-size", "64"])
    assert res.exit_code == 0, res.output
    info = json.loads((codes / "fit_sample.json").read_text())
    assert info["n_sample"] == 120 and info["n_total"] == 300
    tok = Tokenizer.load(codes / "tokenizer")
    assert tok.catalogue_sids_.shape[0] == 120
    df = read_sids(out)
    assert np.array_equal(_sids(df, 3), encode_in_process(tok, catalogue["ids"], catalogue["X"]))
    assert "300 items, 180 new" in res.output


@pytest.mark.slow  # loads the sentence model in a Ray actor
def test_ray_encode_from_text_equals_in_process(ray_local, tmp_path):
    from sidkit.embed import TextEmbedder

    texts = [f"{a} {b} film" for a in ("a funny", "a sad", "a scary", "an epic", "a quiet")
             for b in ("space", "love", "war", "heist", "school", "sea")]
    ids = np.array([f"m{i:02d}" for i in range(len(texts))])
    X = TextEmbedder(cache=False, show_progress=False).embed(texts)
    tok = RQKMeans(codebook_sizes=[3, 3], random_state=0).fit(X[:20])
    tok.save(tmp_path / "codes" / "tokenizer")
    pq.write_table(pa.table({"item_id": ids[::-1], "title": texts[::-1]}), tmp_path / "t.parquet")
    out = tmp_path / "sids"
    s = encode_parquet(tmp_path / "codes", tmp_path / "t.parquet", out, text_column="title",
                       batch_size=8)
    df = read_sids(out)
    assert df["item_id"].tolist() == ids.tolist() and s["n_new"] == 10
    assert np.array_equal(_sids(df, 3), encode_in_process(tok, ids, X))
