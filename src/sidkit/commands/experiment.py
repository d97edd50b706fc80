"""`sidkit experiment FILE [--out DIR] [--dry-run] [--status]`: run a grid of runs, write one results table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import handle_errors


def plan_line(plan) -> str:
    """``data, split: cached; items: copied from CELL; codes, ...: runs`` (consecutive stages grouped)."""
    groups: list[tuple[list[str], str]] = []
    for p in plan:
        if p.status == "shared":
            what = f"copied from {p.detail}"
        elif p.status == "runs":
            what = "runs" + (f" ({p.detail})" if p.detail not in ("", "an upstream stage runs",
                                                                  "not computed yet") else "")
        else:
            what = "cached"
        if groups and groups[-1][1] == what:
            groups[-1][0].append(p.name)
        else:
            groups.append(([p.name], what))
    return "; ".join(f"{', '.join(names)}: {what}" for names, what in groups)


@handle_errors
def experiment(
    file: Path = typer.Argument(..., help="Grid TOML: [base] config keys and [grid] axes (docs/experiments.md)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: the file's out, "
                                       "else runs/experiments/<name>)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs, their folders and their cached "
                                 "stages; run nothing."),
    status: bool = typer.Option(False, "--status", help="Where the grid stands (it may be running in another "
                                "process): per run, model and seed, done / training / waiting, epochs, best "
                                "validation NDCG@10; runs nothing."),
    only: Optional[list[str]] = typer.Option(None, "--only", help="Run only these runs (ids or "
                                             "data set / embedding / tokenizer labels; repeat or "
                                             "separate with commas); the table also lists the runs "
                                             "already complete."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Runs at once, each in its own process with "
                             "an equal share of the torch threads (2 on a 2-core CPU: one single-thread "
                             "training per core)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Torch CPU threads of each run "
                                          "(default: the cores divided by --jobs; more than that "
                                          "oversubscribes the cores and runs several times slower)."),
) -> None:
    """Run a grid (data set x embedding x tokenizer x model x seeds): one sidkit run per
    (data set, embedding, tokenizer) under OUT/runs/, reusing every cached stage, then
    OUT/results.{csv,md,json,png}. An interrupted grid resumes when started again."""
    from ..grid import check_datasets, load_grid, plan_cell, run_experiment, validate_grid

    grid = load_grid(file, out)
    n_models = len(grid.cells[0].model_labels) if grid.cells else 0
    seeds = grid.config.grid.seeds
    typer.echo(f"experiment {grid.config.name}: {len(grid.cells)} run(s), {n_models} model(s), "
               f"seeds {list(seeds) or 'of the config'} -> {grid.out}", err=True)
    if status:
        from ..grid import progress, progress_markdown

        typer.echo(progress_markdown(progress(grid)))
        return
    if dry_run:
        validate_grid(grid)
        check_datasets(grid)
        pending: dict = {}
        for i, cell in enumerate(grid.cells):
            others = [c.dir for c in grid.cells if c is not cell and c.dir.is_dir()]
            plan = plan_cell(cell, others, pending)
            typer.echo(f"[{i + 1}/{len(grid.cells)}] {cell.id}  -> {cell.dir}")
            typer.echo(f"    {plan_line(plan)}")
        return

    def on_cell(i, cell, plan) -> None:
        todo = sum(p.status == "runs" for p in plan)
        typer.echo(f"[{i + 1}/{len(grid.cells)}] {cell.id}: "
                   + ("every stage cached" if not todo else f"{todo} stage(s) to run")
                   + (", started" if jobs > 1 else "") + f"  -> {cell.dir}", err=True)

    def on_stage(cell, r) -> None:   # with --jobs: each cell's stages once it has finished
        what = "cached" if r.status == "cached" else f"{r.seconds:.1f}s"
        who = f"{cell.id} " if jobs > 1 else ""
        if r.reason:
            typer.echo(f"    {who}[{r.name:<11}] {r.reason}; rerunning", err=True)
        typer.echo(f"    {who}[{r.name:<11}] {what:>7}", err=True)

    def on_training(cell, label, seed, rec) -> None:   # with --jobs: each training is a job
        if rec is None:
            typer.echo(f"    {cell.id} {label} seed {seed}: training", err=True)
            return
        stop = {"cap": ", AT ITS EPOCH CAP", "budget": ", time budget spent"}.get(rec.get("stop"), "")
        typer.echo(f"    {cell.id} {label} seed {seed}: trained, {rec['epochs_run']} epochs, best epoch "
                   f"{rec['best_epoch']}{stop} ({rec['train_seconds']:.0f}s)", err=True)

    names = [n for o in only for n in o.split(",")] if only else None
    res = run_experiment(grid, jobs=jobs, threads=threads, only=names, on_cell=on_cell, on_stage=on_stage,
                         on_training=on_training)
    typer.echo(res.files["md"].read_text(encoding="utf-8"))
    typer.echo("Results: " + ", ".join(str(p) for p in res.files.values()), err=True)
