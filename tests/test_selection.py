"""Choices are made on validation, never on test (issue 22, section 1).

Every test builds candidates whose validation and test figures disagree on the winner,
so switching any selection code to the test split (or to "whatever is highest") fails.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from sidkit.errors import ConfigError, DataError
from sidkit.grid import _markdown, chosen_rows
from sidkit.selection import select_best, validation_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def rec(valid: float, test: float, seed: int = 0) -> dict:
    """A run record as docs/results.json and recommender/metrics.json hold them."""
    return {"seed": seed, "valid": {"ndcg@10": valid, "recall@10": 2 * valid},
            "test": {"ndcg@10": test, "recall@10": 2 * test}}


# A: best on validation, worse on test.  B: the reverse.
A = [rec(0.070, 0.040, 0), rec(0.072, 0.041, 1)]
B = [rec(0.060, 0.055, 0), rec(0.061, 0.056, 1)]


def test_select_best_chooses_the_validation_winner_not_the_test_winner():
    assert select_best({"A": A, "B": B}) == "A"
    assert select_best({"B": B, "A": A}) == "A"       # not an artefact of order
    assert select_best([B[0], A[0]]) == 1              # a sequence gives the index
    assert validation_score(A) == pytest.approx(0.071)


@pytest.mark.parametrize("kw", [{"role": "test"}, {"role": "train"}, {"metric": "test_ndcg@10"},
                                {"metric": "test/ndcg@10"}, {"metric": "valid_ndcg@10"}])
def test_choosing_on_test_is_refused(kw):
    with pytest.raises(ConfigError, match="validation"):
        select_best({"A": A, "B": B}, **kw)
    with pytest.raises(ConfigError):
        validation_score(A, **kw)


def test_every_shape_sidkit_writes_is_read_from_its_validation_figures():
    grid_row = {"valid_ndcg@10_mean": 0.07, "test_ndcg@10_mean": 0.09}
    summary = {"valid": {"ndcg@10": {"mean": 0.08, "std": 0.0}}, "test": {"ndcg@10": {"mean": 0.01, "std": 0.0}}}
    assert validation_score(grid_row) == 0.07 and validation_score(summary) == 0.08
    assert select_best({"row": grid_row, "summary": summary}) == "summary"


def test_a_candidate_without_validation_figures_cannot_take_part():
    with pytest.raises(DataError, match="no validation"):
        select_best({"A": A, "test only": {"test": {"ndcg@10": 0.9}}})
    with pytest.raises(DataError, match="no validation"):
        select_best({"A": A, "one seed lacks it": [rec(0.1, 0.1), {"valid": None, "test": {"ndcg@10": 0.1}}]})
    with pytest.raises(DataError):
        select_best({})


def test_a_tie_goes_to_the_first_candidate():
    assert select_best({20: [rec(0.05, 0.01)], 50: [rec(0.05, 0.09)]}) == 20


def test_beam_width_benchmark_chooses_on_validation_and_shows_test_beside():
    from beam_width_ml100k import choose_beam, markdown

    rows = [{"seed": s, "beam": b, "valid": r["valid"] | {"ndcg@20": 0.0, "recall@20": 0.0, "mrr@20": 0.0},
             "test": r["test"] | {"ndcg@20": 0.0, "recall@20": 0.0, "mrr@20": 0.0}, "seconds": 1.0}
            for b, rs in ((20, B), (50, A)) for s, r in enumerate(rs)]
    assert choose_beam(rows) == 50
    page = markdown("m", "cmd", "0,1", rows)
    assert "| beam | valid NDCG@10 (decides) |" in page and "test NDCG@10" in page
    assert "| 50 (chosen) | **0.0710 ± 0.0014** |" in page and "| 20 | 0.0605 ± 0.0007 |" in page
    # the same widths with equal validation figures: the narrower (cheaper) beam
    tied = [r | {"valid": {**r["valid"], "ndcg@10": 0.05}} for r in rows]
    assert choose_beam(tied) == 20


def test_results_page_marks_the_validation_winner_among_sid_recipes():
    from results_ml100k import choice_markdown

    groups = {"sasrec": [rec(0.09, 0.09)],                       # not a SID recipe: never the preset's
              "causal_sid@rqkmeans-256x2": B, "causal_sid@rqkmeans-256x3": A}
    md = "\n".join(choice_markdown(groups))
    assert "valid NDCG@10 (decides)" in md
    assert "highest validation NDCG@10: **causal_sid@rqkmeans-256x3**" in md
    assert "| causal_sid@rqkmeans-256x3 (chosen) | 2 | -- | **0.0710 ± 0.0014** | 0.0405 ± 0.0007 |" in md
    assert "causal_sid@rqkmeans-256x2 (chosen)" not in md


def test_grid_results_mark_the_validation_winner_per_data_set():
    def row(ds, tok, valid, test):
        return {"dataset": ds, "embedding": "text", "tokenizer": tok, "model": "causal_sid", "seeds": "0 1",
                "valid_ndcg@10_mean": valid, "valid_ndcg@10_std": 0.001,
                "test_ndcg@10_mean": test, "test_ndcg@10_std": 0.001, "run": f"{ds}__text__{tok}"}

    rows = [row("ml", "rqkmeans", 0.07, 0.04), row("ml", "gaoq", 0.06, 0.05),
            row("toy", "rqkmeans", 0.01, 0.09), row("toy", "gaoq", 0.02, 0.08),
            {"dataset": "toy", "embedding": "", "tokenizer": "", "model": "TIGER", "seeds": "",
             "reference": "a paper", "test_ndcg@10_mean": 0.5, "test_ndcg@10_std": None}]
    chosen = chosen_rows(rows)
    assert chosen["ml"]["tokenizer"] == "rqkmeans" and chosen["toy"]["tokenizer"] == "gaoq"
    grid = SimpleNamespace(config=SimpleNamespace(name="g"), cells=[None] * 4, references={})
    md = _markdown(grid, rows, [])
    assert "valid ndcg@10 (decides)" in md.split("|---")[0]
    assert "| ml | text | rqkmeans | causal_sid (chosen) |" in md and "| ml | text | gaoq | causal_sid |" in md
    assert "| toy | text | gaoq | causal_sid (chosen) |" in md
    assert "**0.0700 ± 0.0010**" in md
    assert "Chosen on validation NDCG@10 (toy): text / gaoq / causal_sid (valid 0.0200 ± 0.0010" in md


def test_the_preset_takes_the_sids_that_win_on_validation_in_the_records():
    """configs/presets/sidkit.toml must use the SID recipe of docs/results.json with the
    highest validation NDCG@10 (not the test winner)."""
    from results_ml100k import choice_markdown

    doc = json.loads((ROOT / "docs" / "results.json").read_text())
    groups: dict[str, list[dict]] = {}
    for r in doc["records"]:
        groups.setdefault(r.get("label", r["model"]), []).append(r)
    sid = {m: rs for m, rs in groups.items() if "@" in m}
    best = select_best(sid)
    method, sizes = best.split("@", 1)[1].split("-")
    k, levels = (int(x) for x in sizes.split("x"))
    preset = tomllib.loads((ROOT / "configs" / "presets" / "sidkit.toml").read_text())
    assert preset["codes"]["method"] == method and preset["codes"]["codebook_sizes"] == [k] * levels
    assert f"**{best}**" in "\n".join(choice_markdown(groups))
