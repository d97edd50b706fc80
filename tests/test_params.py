"""Parameter validation (issue 8, items 4 and 6): the declarative constraints, the CLI
options of `sidkit tokenize`, n_levels vs codebook_sizes, input scale, and refits that
keep the codes stage's output hash."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from sidkit.cli import app
from sidkit.config import config_from_dict
from sidkit.errors import ConfigError, DataError
from sidkit.io import read_json, save_npy
from sidkit.tokenizers import RQKMeans, check_embeddings
from sidkit.tokenizers.base import Bool, Device, Int, Ints, Real, check_params, check_scale

runner = CliRunner()


def test_constraints_accept_and_describe():
    assert Int(ge=1).accepts(3) and Int(ge=1).accepts(np.int64(3))
    assert not Int(ge=1).accepts(0) and not Int(ge=1).accepts(True) and not Int().accepts(2.0)
    assert Real(gt=0).accepts(1e-3) and Real(gt=0).accepts(2) and not Real(gt=0).accepts(0)
    assert not Real(ge=0).accepts(float("inf")) and not Real(ge=0).accepts(False)
    assert Real(ge=0, lt=1).describe() == "a number >= 0 and < 1"
    assert Ints(ge=2).accepts([2, 3]) and Ints(ge=2).accepts((4,)) and Ints(ge=2).accepts(np.array([2]))
    assert not Ints(ge=2).accepts([]) and not Ints(ge=2).accepts([2, 1]) and not Ints().accepts("22")
    assert Ints(ge=1, allow_empty=True).accepts([])
    assert Bool().accepts(False) and not Bool().accepts(0)
    assert Device().accepts("auto") and Device().accepts("cuda:1") and not Device().accepts("gpu0")


def test_check_params_names_parameter_value_and_accepted_forms():
    with pytest.raises(DataError) as e:
        check_params(RQKMeans, {"n_init": 0})
    assert str(e.value).startswith("RQKMeans parameter n_init=0 is invalid: must be an integer >= 1")
    with pytest.raises(DataError, match=r"codebook_sizes='16,16' is invalid: must be None or an "
                                        r"integer >= 2 or a non-empty list of integers, each >= 2"):
        check_params(RQKMeans, {"codebook_sizes": "16,16"})
    check_params(RQKMeans, {"codebook_sizes": 16, "n_levels": 3})  # an int repeats per level
    check_params(RQKMeans, {"codebook_sizes": [16, 16], "n_levels": None})


def test_n_levels_none_follows_codebook_sizes():
    X = np.random.default_rng(0).normal(size=(200, 6)).astype(np.float32)
    assert RQKMeans(codebook_sizes=[4, 4], resolve_collisions=False).fit_encode(X).n_levels == 2
    assert RQKMeans(codebook_sizes=4, resolve_collisions=False).fit_encode(X).n_levels == 3
    assert RQKMeans(codebook_sizes=4, n_levels=2, resolve_collisions=False).fit_encode(X).n_levels == 2
    with pytest.raises(DataError, match=r"codebook_sizes=\[4, 4\] has 2 entries but n_levels=3"):
        RQKMeans(codebook_sizes=[4, 4], n_levels=3).fit(X)


def test_config_n_levels_and_codebook_sizes():
    assert config_from_dict({"codes": {"codebook_sizes": [8, 8]}}).codes.n_levels == 2
    assert config_from_dict({"codes": {}}).codes.n_levels == 3
    assert config_from_dict({"codes": {"n_levels": 2, "codebook_sizes": [8, 8]}}).codes.n_levels == 2
    with pytest.raises(ConfigError, match=r"n_levels = 3 but codebook_sizes = \[8, 8\] has 2 entries"):
        config_from_dict({"codes": {"n_levels": 3, "codebook_sizes": [8, 8]}})


# --------------------------------------------------------------- input scale
def test_check_scale_limits_and_inputs():
    import torch

    X = np.ones((4, 384), np.float32)
    check_scale(X * 1e17)  # squared distances still fit in float32
    with pytest.raises(DataError, match=r"values up to 1e\+20 .*384 dims"):
        check_scale(X * 1e20)
    with pytest.raises(DataError, match=r"values up to 3e\+20"):
        check_scale(torch.from_numpy(X * -3e20))
    # float64 beyond float32's range: reported by its size, not as "inf"
    big = np.ones((3, 4)) * 1e300
    with pytest.raises(DataError, match=r"values up to 1e\+300"):
        check_embeddings(big)


def test_huge_values_used_to_collapse_rqkmeans():
    """The failure this guards against: 1e20-scaled clustered data gave 2 used codes."""
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(8, 16)) * 3)[rng.integers(0, 8, 400)] + rng.normal(size=(400, 16))
    X = X.astype(np.float32)
    fine = RQKMeans(codebook_sizes=[8], resolve_collisions=False).fit_encode(X)
    assert len(np.unique(fine.codes[:, 0])) == 8
    with pytest.raises(DataError, match=r"overflow float32(.|\n)*rescale"):
        RQKMeans(codebook_sizes=[8], resolve_collisions=False).fit_encode(X * np.float32(1e20))


# ----------------------------------------------------------- sidkit tokenize
@pytest.fixture()
def emb(tmp_path):
    rng = np.random.default_rng(0)
    X = ((rng.normal(size=(4, 6)) * 3)[rng.integers(0, 4, 80)] + rng.normal(size=(80, 6)))
    p = tmp_path / "emb.npy"
    save_npy(p, X.astype(np.float32))
    return p


@pytest.mark.parametrize("args, message", [
    (["--sizes", "a,b"], "--sizes 'a,b' is not a comma-separated list of integers"),
    (["--sizes", "8,1"], "--sizes '8,1': every codebook size must be >= 2"),
    (["-p", "n_init=0"], "n_init=0 is invalid: must be an integer >= 1"),
    (["-p", "n_iter=-3"], "n_iter=-3 is invalid: must be an integer >= 1"),
    (["-p", "n_iter=2.5"], "n_iter=2.5 is invalid"),
    (["-p", "bogus=1"], "has no parameter(s) ['bogus']"),
    (["-p", "n_init"], "'n_init' is not of the form key=value"),
    (["--levels", "3", "--sizes", "8,8"], "n_levels = 3 but codebook_sizes = [8, 8] has 2 entries"),
    (["--method", "rqvae", "-p", "lr=0"], "lr=0 is invalid: must be a number > 0"),
    (["--method", "gaoq", "-p", "branching=[4, 1]"], "branching=[4, 1] is invalid"),
])
def test_cli_tokenize_bad_options(emb, tmp_path, args, message):
    out = tmp_path / "out"
    r = runner.invoke(app, ["tokenize", str(emb), "--out", str(out), *args])
    assert isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "error:" in r.output and message in r.output, r.output
    assert not out.exists()


def test_cli_tokenize_sizes_set_the_levels(emb, tmp_path):
    r = runner.invoke(app, ["tokenize", str(emb), "--out", str(tmp_path / "o"), "--sizes", "4,4",
                            "--no-resolve-collisions", "-p", "n_iter=5"])
    assert r.exit_code == 0, r.output
    meta = read_json(tmp_path / "o" / "codes.json")
    assert meta["codebook_sizes"] == [4, 4] and meta["n_levels"] == 2
    assert meta["params"]["n_iter"] == 5


# ------------------------------------------------- refits keep the stage hash
def test_refit_keeps_the_saved_tokenizer_identical(emb, tmp_path):
    """tokenizer.json used to carry fit_seconds: a byte-identical refit changed the
    codes stage's output hash (and forced the diagnostics to rerun)."""
    from sidkit.stages import output_hash

    X = np.load(emb)
    dirs = []
    for k in range(2):
        tok = RQKMeans(codebook_sizes=[4, 4], n_iter=5)
        tok.fit(X)
        assert tok.fit_stats_["fit_seconds"] > 0  # still measured, on the object
        dirs.append(tok.save(tmp_path / f"t{k}"))
    assert output_hash(dirs[0]) == output_hash(dirs[1])
    assert "fit_seconds" not in (dirs[0] / "tokenizer.json").read_text()
