"""fetch_ml100k (real download once per module, offline sources) and the `data` CLI."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _require import REQUIRE_DATA, skip_or_fail
from sidkit.commands.data import app
from sidkit.data import (extract_ml100k_from_wheel, fetch_ml100k, kcore, leave_one_out, load_dataset)
from sidkit.data import fetch as fetch_mod
from sidkit.errors import DataError

FIX = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One SIDKIT datasets cache for the module: the real fetch runs once."""
    return tmp_path_factory.mktemp("sidkit_home") / "datasets"


@pytest.fixture(scope="module")
def ml100k(cache):
    try:
        return fetch_ml100k(cache_dir=cache)
    except DataError as e:
        if "pip download" in str(e) or "could not run pip" in str(e):
            skip_or_fail(f"no network: cannot download recbole==1.2.1 from PyPI ({e.problem[:120]})",
                         REQUIRE_DATA)
        raise


def test_fetch_ml100k_counts(ml100k, cache):
    assert ml100k == cache / "ml-100k"
    assert sorted(p.name for p in ml100k.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no staging leftovers
    ds = load_dataset("ml-100k", cache_dir=cache)
    inter = ds.interactions
    assert (inter.n_users, inter.n_items, len(inter)) == (943, 1682, 100_000)
    assert len(ds.items) == 1682 and ds.name == "ml-100k"
    assert ds.items.df.set_index("item_id").loc["1", "title"] == "Toy Story"
    split = leave_one_out(kcore(inter, user_k=5))
    assert (split.df.role == "test").sum() == 943


def test_fetch_is_cached(ml100k, cache, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("must not download again")

    monkeypatch.setattr(fetch_mod, "_download_wheel", boom)
    assert fetch_ml100k(cache_dir=cache) == ml100k
    monkeypatch.setenv("SIDKIT_HOME", str(cache.parent))  # default cache: $SIDKIT_HOME/datasets
    assert fetch_ml100k() == ml100k
    assert len(load_dataset("ml-100k").interactions) == 100_000
    # a corrupted file is detected by checksum and triggers a re-fetch
    (ml100k / "ml-100k.item").write_text("corrupt")
    with pytest.raises(AssertionError, match="must not download again"):
        fetch_ml100k(cache_dir=cache)


def _fake_wheel(path: Path, content: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in content.items():
            z.writestr(fetch_mod.RECBOLE_PREFIX + name, data)
    return path


def test_wheel_checksum_mismatch_leaves_nothing(tmp_path):
    wheel = _fake_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl",
                        {n: b"wrong" for n in fetch_mod.ML100K_SHA256})
    target = tmp_path / "datasets" / "ml-100k"
    with pytest.raises(DataError, match="checksum mismatch for ml-100k.inter"):
        extract_ml100k_from_wheel(wheel, target)
    assert not target.exists() and list((tmp_path / "datasets").iterdir()) == []
    (tmp_path / "notazip.whl").write_text("x")
    with pytest.raises(DataError, match="not a readable wheel"):
        extract_ml100k_from_wheel(tmp_path / "notazip.whl", target)
    with pytest.raises(DataError, match="has no recbole/dataset_example"):
        extract_ml100k_from_wheel(_fake_wheel(tmp_path / "empty.whl", {}), target)


def test_pip_failure_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_mod, "RECBOLE_REQUIREMENT", "this-package-does-not-exist-sidkit==0.0.0")
    monkeypatch.setattr(fetch_mod.sys, "executable", "/nonexistent/python")
    with pytest.raises(DataError) as e:
        fetch_ml100k(cache_dir=tmp_path)
    assert "could not run pip" in str(e.value) and "--source ml-100k.zip" in str(e.value)
    assert not (tmp_path / "ml-100k").exists()


def test_source_grouplens_zip_and_dir(tmp_path):
    z = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in (FIX / "grouplens100k").iterdir():
            zf.write(f, f"ml-100k/{f.name}")
    out = fetch_ml100k(cache_dir=tmp_path / "c", source=z)
    assert (out / "u.data").is_file() and out.parent == tmp_path / "c"
    ds = load_dataset("ml-100k", cache_dir=tmp_path / "c", source=z)
    assert len(ds.interactions) == 11 and ds.name == "ml-100k"
    assert fetch_ml100k(source=FIX / "grouplens100k") == FIX / "grouplens100k"
    with pytest.raises(DataError, match="neither GroupLens"):
        fetch_ml100k(source=tmp_path / "c")
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("other.txt", "x")
    with pytest.raises(DataError, match="has no ml-100k/u.data"):
        fetch_ml100k(cache_dir=tmp_path / "c2", source=bad)
    assert not (tmp_path / "c2" / "ml-100k-grouplens").exists()


def test_cli_info_and_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["info", str(FIX / "grouplens100k")])
    assert res.exit_code == 0, res.output
    assert "interactions" in res.output and "11" in res.output
    res = runner.invoke(app, ["info", str(FIX / "grouplens100k"), "--json", "--user-core", "2"])
    assert res.exit_code == 0 and '"users": 3' in res.output
    res = runner.invoke(app, ["info", "no-such-data"])
    assert res.exit_code == 1 and "unknown data set" in res.output
    res = runner.invoke(app, ["fetch", "ml-1m"])
    assert res.exit_code == 1 and "cannot be fetched" in res.output
    dst = tmp_path / "gl"
    shutil.copytree(FIX / "grouplens100k", dst)
    res = runner.invoke(app, ["fetch", "ml-100k", "--source", str(dst)])
    assert res.exit_code == 0 and str(dst) in res.output
