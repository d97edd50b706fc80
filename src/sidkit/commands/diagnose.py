"""`sidkit diagnose` / `sidkit compare`: Semantic-ID diagnostics reports.

A run directory holds ``embeddings/embeddings.npy``, ``codes/codes.{npz,json}``,
``codes/tokenizer/`` and optionally ``split/`` (co-engaged pairs = consecutive
training items of a user).  A bare Codes file gives the code-only metrics.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from ..errors import ArtifactError, SidkitError
from ..io import load_npy

DEFAULT_SCALES = "0,0.02,0.05,0.1,0.2,0.5"
MAX_PAIRS = 1_000_000


def _warn(msg: str) -> None:
    typer.echo(f"warning: {msg}", err=True)


def _codes_path(path: Path) -> tuple[Path, Path | None]:
    """(codes stem, run directory or None)."""
    if path.is_dir():
        for cand in (path / "codes" / "codes", path / "codes"):
            if cand.with_suffix(".npz").exists() and cand.with_suffix(".json").exists():
                return cand, (path if cand.parent.name == "codes" else None)
        raise ArtifactError(f"{path} holds no codes/codes.npz + codes.json",
                            "pass a run directory made by the pipeline or a Codes file")
    stem = path.with_suffix("") if path.suffix in (".npz", ".json") else path
    return stem, None


def _co_engaged_pairs(run: Path, codes: Any, seed: int) -> np.ndarray | None:
    split_dir = run / "split"
    if not split_dir.exists():
        return None
    if codes.item_ids is None:
        _warn("codes carry no item_ids; skipping soft matching (cannot map split items to rows)")
        return None
    from ..data.containers import Split

    df = Split.load(split_dir).df
    df = df[df["role"] == "train"].sort_values(["user_id", "position"], kind="stable")
    row_of = {str(i): r for r, i in enumerate(codes.item_ids.astype(str))}
    rows = df["item_id"].map(row_of).to_numpy(dtype=float, na_value=np.nan)
    users = df["user_id"].to_numpy()
    same = users[1:] == users[:-1]
    a, b = rows[:-1][same], rows[1:][same]
    ok = ~np.isnan(a) & ~np.isnan(b) & (a != b)
    pairs = np.stack([a[ok], b[ok]], 1).astype(np.int64)
    if len(pairs) > MAX_PAIRS:
        pairs = pairs[np.random.default_rng(seed).choice(len(pairs), MAX_PAIRS, replace=False)]
    return pairs if len(pairs) else None


def load_inputs(path: Path, seed: int = 0) -> dict[str, Any]:
    """Everything ``diagnose`` can use from a run directory or a Codes file."""
    from ..types import Codes

    stem, run = _codes_path(Path(path))
    codes = Codes.load(stem)
    inputs: dict[str, Any] = {"codes": codes}
    if run is None:
        return inputs
    emb = run / "embeddings" / "embeddings.npy"
    if emb.exists():
        X = load_npy(emb, mmap_mode="r")
        if X.ndim != 2 or not np.issubdtype(X.dtype, np.number):
            raise ArtifactError(f"{emb} holds a {X.ndim}-D {X.dtype} array, not (items, dim) "
                                "numbers", "re-run the embeddings stage (`sidkit run CONFIG --force`)")
        if X.shape[0] == codes.n_items:
            inputs["X"] = X
        else:
            _warn(f"{emb} has {X.shape[0]} rows but the codes have {codes.n_items}; ignoring embeddings")
    tok_dir = run / "codes" / "tokenizer"
    if tok_dir.exists():
        from ..tokenizers import Tokenizer

        try:
            inputs["tokenizer"] = Tokenizer.load(tok_dir)
        except ArtifactError as e:  # a damaged artifact is an error, not a skipped metric
            raise ArtifactError(e.problem, f"{e.fix}; or delete {tok_dir} to diagnose the "
                                "codes without the tokenizer metrics") from None
    try:
        pairs = _co_engaged_pairs(run, codes, seed)
    except SidkitError as e:
        _warn(f"could not read co-engaged pairs from {run / 'split'} ({e.problem})")
        pairs = None
    if pairs is not None:
        inputs["pairs"] = pairs
    return inputs


def _parse_scales(text: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise SidkitError(f"--scales {text!r} is not a comma-separated list of numbers",
                          "write e.g. --scales 0,0.05,0.1,0.2") from None
    if not vals or min(vals) < 0:
        raise SidkitError(f"--scales {text!r} must be non-negative numbers", "write e.g. --scales 0,0.1")
    return vals


def _name(path: Path, taken: set[str]) -> str:
    path = Path(path)
    base = path.name if path.is_dir() else path.with_suffix("").name
    if base in ("codes",) and path.parent.name:
        base = path.parent.name
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


def _run(paths: list[Path], out: Path, scales: str, monte_carlo: bool, n_mc: int, seed: int,
         title: str, paired: Path | None = None) -> None:
    from ..diagnostics import diagnose as run_diagnose
    from ..diagnostics import write_report

    sc = _parse_scales(scales)
    results: dict[str, Any] = {}
    for p in paths:
        if not Path(p).exists():
            raise ArtifactError(f"{p} does not exist", "pass a run directory or a Codes .npz/.json file")
        name = _name(p, set(results))
        inputs = load_inputs(Path(p), seed)
        if paired is not None:
            if not Path(paired).exists():
                raise ArtifactError(f"paired view {paired} does not exist",
                                    "pass an (N, d) .npy in the row order of the codes")
            inputs["X2"] = load_npy(paired, mmap_mode="r")
        typer.echo(f"diagnosing {name} ({inputs['codes']!r})", err=True)
        results[name] = run_diagnose(scales=sc, monte_carlo=monte_carlo, n_mc=n_mc,
                                     random_state=seed, **inputs)
        typer.echo(f"  {results[name]['hourglass']['verdict']}", err=True)
    paths_out = write_report(results, out, title=title)
    typer.echo(str(paths_out["html"]))


def default_out(path: Path) -> Path:
    """RUN/diagnostics (or next to a Codes file), but never inside a folder that
    ``sidkit run`` owns (one with a meta.json): the pipeline would rerun or refuse it.
    There the report goes to RUN/diagnose instead."""
    base = path if path.is_dir() else path.parent
    if (base / "meta.json").exists():  # a Codes file inside a pipeline stage folder
        return base.parent / "diagnose"
    if (base / "diagnostics" / "meta.json").exists():  # the pipeline's own diagnostics stage
        return base / "diagnose"
    return base / "diagnostics"


def diagnose(
    run_or_codes: Path = typer.Argument(..., help="a pipeline run directory or a Codes .npz/.json file"),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="output directory (default: RUN/diagnostics or next to the codes; "
                                            "RUN/diagnose for a `sidkit run` directory)"),
    scales: str = typer.Option(DEFAULT_SCALES, "--scales", help="perturbation scales s (x data RMS)"),
    monte_carlo: bool = typer.Option(True, "--monte-carlo/--no-monte-carlo",
                                     help="re-encode perturbed items (needs embeddings + tokenizer)"),
    n_mc: int = typer.Option(100_000, "--n-mc", help="at most this many items in the Monte-Carlo overlap"),
    seed: int = typer.Option(0, "--seed"),
    paired: Optional[Path] = typer.Option(None, "--paired", help="retrieval-time view (N, d) .npy for the "
                                          "Monte-Carlo overlap, e.g. another text view"),
) -> None:
    """Diagnose one tokenizer's Semantic IDs: report.html, report.json, report.md."""
    try:
        if out is None:
            out = default_out(Path(run_or_codes))
        _run([run_or_codes], out, scales, monte_carlo, n_mc, seed, "sidkit diagnostics", paired)
    except SidkitError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


def compare(
    paths: list[Path] = typer.Argument(..., help="run directories or Codes files, shown side by side"),
    out: Path = typer.Option(Path("sidkit-compare"), "--out", "-o", help="output directory"),
    scales: str = typer.Option(DEFAULT_SCALES, "--scales", help="perturbation scales s (x data RMS)"),
    monte_carlo: bool = typer.Option(True, "--monte-carlo/--no-monte-carlo"),
    n_mc: int = typer.Option(100_000, "--n-mc"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Compare several tokenizers' Semantic IDs in one report."""
    try:
        _run(list(paths), out, scales, monte_carlo, n_mc, seed, "sidkit tokenizer comparison")
    except SidkitError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


if __name__ == "__main__":  # pragma: no cover - manual use
    app = typer.Typer()
    app.command()(diagnose)
    app.command()(compare)
    app()
    sys.exit(0)
