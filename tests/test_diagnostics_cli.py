"""`sidkit diagnose` / `sidkit compare` on a hand-made run directory."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from sidkit.commands.diagnose import compare, diagnose, load_inputs
from sidkit.tokenizers import base as tokenizer_base
from sidkit.tokenizers.base import Tokenizer
from sidkit.types import Codes


class _DiagTestRQ(Tokenizer):
    """Stand-in residual quantizer saved/loaded through the Tokenizer interface."""

    name: ClassVar[str] = "_diag_test_rq"
    _state_attrs: ClassVar[tuple[str, ...]] = ("codebooks_",)

    def __init__(self, n_codes: int = 4, n_levels: int = 2, random_state: int = 0):
        self.n_codes, self.n_levels, self.random_state = n_codes, n_levels, random_state

    def fit(self, X, y=None):
        g = np.random.default_rng(self.random_state)
        R = np.asarray(X, dtype=np.float32).copy()
        cbs = []
        for _ in range(self.n_levels):
            C = R[g.choice(len(R), self.n_codes, replace=False)].copy()
            a = ((R[:, None] - C[None]) ** 2).sum(-1).argmin(1)
            R = R - C[a]
            cbs.append(C)
        self.codebooks_ = np.stack(cbs)
        return self

    def encode(self, X):
        R = np.asarray(X, dtype=np.float32).copy()
        out = []
        for C in self.codebooks_:
            a = ((R[:, None] - C[None]) ** 2).sum(-1).argmin(1)
            out.append(a)
            R = R - C[a]
        return Codes(np.stack(out, 1), (self.n_codes,) * self.n_levels, method=self.name)

    def decode(self, codes):
        return sum(self.codebooks_[l][codes.codes[:, l]] for l in range(codes.n_levels))


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    """Register the stand-in only while a test runs, so other suites never see it."""
    monkeypatch.setitem(tokenizer_base._REGISTRY, _DiagTestRQ.name, _DiagTestRQ)



def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("diagnose")(diagnose)
    app.command("compare")(compare)
    return app


@pytest.fixture()
def run_dir(tmp_path):
    g = np.random.default_rng(0)
    X = (g.normal(size=(5, 4)) * 3)[g.integers(0, 5, 120)] + g.normal(size=(120, 4))
    X = X.astype(np.float32)
    run = tmp_path / "run"
    (run / "embeddings").mkdir(parents=True)
    np.save(run / "embeddings" / "embeddings.npy", X)
    tok = _DiagTestRQ().fit(X)
    items = np.array([f"i{k}" for k in range(120)])
    tok.encode(X).replace(item_ids=items).save(run / "codes" / "codes")
    tok.save(run / "codes" / "tokenizer")
    from sidkit.data.containers import Split

    users = np.repeat([f"u{k}" for k in range(10)], 6)
    df = pd.DataFrame({"user_id": users, "item_id": items[g.integers(0, 120, 60)],
                       "timestamp": np.arange(60), "position": np.tile(np.arange(6), 10),
                       "role": np.tile(["train"] * 4 + ["valid", "test"], 10)})
    Split(df).save(run / "split")
    return run


def _expected_pairs(run_dir):
    """Consecutive training items of each user as item rows (a != b), by hand."""
    df = pd.read_parquet(run_dir / "split" / "split.parquet")
    out = []
    for _, g in df[df["role"] == "train"].sort_values(["user_id", "position"]).groupby("user_id"):
        rows = [int(i[1:]) for i in g["item_id"]]
        out += [(a, b) for a, b in zip(rows[:-1], rows[1:]) if a != b]
    return out


def test_load_inputs(run_dir):
    inp = load_inputs(run_dir)
    assert set(inp) == {"codes", "X", "tokenizer", "pairs"}
    expected = _expected_pairs(run_dir)
    assert 25 <= len(expected) <= 30  # 10 users x 3 consecutive training pairs
    assert sorted(map(tuple, inp["pairs"].tolist())) == sorted(expected)


def test_cli_diagnose_and_compare(run_dir, tmp_path):
    X = np.load(run_dir / "embeddings" / "embeddings.npy")
    np.save(tmp_path / "view2.npy", X)
    r = CliRunner().invoke(_app(), ["diagnose", str(run_dir), "--scales", "0,0.1", "--n-mc", "50",
                                    "--paired", str(tmp_path / "view2.npy")])
    assert r.exit_code == 0, r.output
    data = json.loads((run_dir / "diagnostics" / "report.json").read_text())
    res = data["tokenizers"]["run"]
    assert res["monte_carlo"]["n_sampled"] == 50 and res["fidelity"]["source"] == "codebooks"
    assert res["monte_carlo"]["paired"]["sid_change_rate"] == 0.0
    assert res["soft_matching"]["n_pairs"] == len(_expected_pairs(run_dir))
    codes_file = run_dir / "codes" / "codes.npz"
    out = tmp_path / "cmp"
    r = CliRunner().invoke(_app(), ["compare", str(run_dir), str(codes_file), "--out", str(out),
                                    "--no-monte-carlo"])
    assert r.exit_code == 0, r.output
    names = set(json.loads((out / "report.json").read_text())["tokenizers"])
    assert len(names) == 2 and "run" in names
    assert (out / "report.html").exists() and (out / "report.md").exists()


def test_cli_errors(tmp_path):
    r = CliRunner().invoke(_app(), ["diagnose", str(tmp_path / "missing")])
    assert r.exit_code == 1 and "error:" in r.output
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(_app(), ["diagnose", str(tmp_path / "empty")])
    assert r.exit_code == 1 and "codes" in r.output
    r = CliRunner().invoke(_app(), ["compare", str(tmp_path / "empty"), "--scales", "a,b"])
    assert r.exit_code == 1
