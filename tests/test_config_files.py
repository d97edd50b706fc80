"""Every config file shipped in configs/ is valid: experiment configs and presets load
with the typed models (unknown keys rejected), grid files parse and validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidkit.config import load_config
from sidkit.grid import load_grid, validate_grid

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUN_CONFIGS = sorted(p for p in CONFIGS.rglob("*.toml") if not {"experiments", "published"} & set(p.parts))
GRIDS = sorted((CONFIGS / "experiments").glob("*.toml"))
PUBLISHED = sorted((CONFIGS / "published").glob("*.toml"))


def test_configs_are_found():
    names = {p.relative_to(CONFIGS).as_posix() for p in RUN_CONFIGS}
    assert {"causal.toml", "tiger.toml", "presets/resid.toml", "presets/tiger.toml", "presets/sidkit.toml"} <= names
    assert GRIDS


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_run_config_loads(path):
    cfg = load_config(path)
    assert cfg.recommenders() or cfg.model is not None


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_published_figures_are_typed_reference_rows(path):
    """configs/published/*.toml: tables of rows a grid's references = "FILE:TABLE" reads."""
    import tomllib

    from sidkit.grid import ReferenceRow

    doc = tomllib.loads(path.read_text())
    assert doc and all(isinstance(rows, list) and rows for rows in doc.values())
    for rows in doc.values():
        for row in rows:
            ReferenceRow.model_validate(row)          # model, source, metrics in [0, 1], note


def test_presets_are_the_recipes():
    resid = load_config(CONFIGS / "presets" / "resid.toml")
    assert (resid.embed.method, resid.codes.method) == ("famae", "gaoq")
    assert [m.type for _, m, _ in resid.recommenders()] == ["popularity", "causal_sid"]
    tiger = load_config(CONFIGS / "presets" / "tiger.toml")
    assert (tiger.embed.method, tiger.codes.method) == ("text", "rqvae")
    assert [m.type for _, m, _ in tiger.recommenders()] == ["popularity", "tiger"]
    best = load_config(CONFIGS / "presets" / "sidkit.toml")      # the settings behind docs/results.md's best row
    assert (best.embed.method, best.codes.method, best.codes.codebook_sizes) == ("text", "rqkmeans", [256] * 3)
    models = {m.type: (m, t) for _, m, t in best.recommenders()}
    assert list(models) == ["popularity", "sasrec", "causal_sid"]
    causal, causal_train = models["causal_sid"]
    assert (causal.max_len, causal_train.epochs, causal_train.lr, causal_train.batch_size) == (20, 60, 3e-3, 32)
    assert (models["sasrec"][1].epochs, models["sasrec"][1].patience, models["sasrec"][1].lr) == (80, 20, 1e-3)


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.name)
def test_grid_file_validates(path, tmp_path):
    grid = load_grid(path, out=tmp_path / "out")
    validate_grid(grid)
    assert not (tmp_path / "out").exists()   # validation writes nothing
