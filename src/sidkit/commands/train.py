"""`sidkit train CONFIG --out DIR` and `sidkit evaluate RUN_DIR`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

import typer

from ..errors import ArtifactError, ConfigError, SidkitError
from ._common import handle_errors


def with_overrides(cfg, device: str | None = None, seeds: str | None = None, epochs: int | None = None,
                   method: str | None = None):
    """``cfg`` with the command line's ``--device``, ``--seeds``, ``--epochs`` (for every
    model, over its own ``train`` table too) and ``--method``."""
    if not (device or seeds or epochs or method):
        return cfg
    from ..config import config_from_dict

    d = cfg.model_dump(exclude_unset=False)
    if device:
        d["device"] = device
    if method:
        d["codes"]["method"] = method
    train = {}
    if seeds:
        try:
            train["seeds"] = [int(s) for s in seeds.split(",")]
        except ValueError:
            raise ConfigError(f"--seeds must be comma-separated integers, got {seeds!r}",
                              "write e.g. --seeds 0,1,2") from None
    if epochs:
        train["epochs"] = epochs
    d["train"].update(train)
    for m in ([d["model"]] if d.get("model") else []) + list(d.get("models") or []):
        if m.get("train") is not None:
            m["train"] = {k: v for k, v in m["train"].items() if v is not None} | train
    return config_from_dict(d, "command line")


@handle_errors
def train(
    config: Path = typer.Argument(..., help="TOML config with a [model] table (and optionally [train])."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (data/, split/, recommender/)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda (overrides the config)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds (overrides [train] seeds)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Maximum epochs (overrides [train] epochs)."),
    force: bool = typer.Option(False, "--force",
                               help="Retrain the config's models from scratch (drops stored checkpoints), replacing "
                                    "models of the run with the same label; models the config does not name are "
                                    "kept."),
    nproc: int = typer.Option(1, "--nproc", min=1,
                              help="Train data-parallel in N local processes (torchrun; one GPU each on CUDA)."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="Torch CPU threads per process (default: torch's; 1 with --nproc)."),
) -> None:
    """Train and evaluate the configured recommender (runs the data and split stages as needed;
    also items, embeddings and codes for a causal SID model without [model] codes).

    Writes RUN/recommender/models/<label>/seed-<s>/, metrics.json and metrics.md; an interrupted
    run resumes from its last epoch checkpoint when started again.  The run's other models are
    kept: a label the config does not name stays as it is, and a label trained with another
    config is replaced only with --force.  With --nproc N (or under
    `torchrun -m sidkit train`) the torch models train data-parallel (docs/distributed.md).
    """
    from ..training import distributed
    from ..config import load_config
    from ..pipeline import recommender_stage, validate_models
    from ..stages import run_stage

    cfg = with_overrides(load_config(config), device, seeds, epochs)
    if not cfg.recommenders():
        raise ConfigError(f"{config} has no [model] table (or [[models]] list), so there is nothing to train",
                          'add e.g.\n[model]\ntype = "sasrec"')
    validate_models(cfg)                  # before any stage runs
    if threads:
        import torch

        torch.set_num_threads(threads)
    if nproc > 1 and distributed.launched():
        raise ConfigError(f"--nproc {nproc} was given to a process that torchrun started",
                          "drop --nproc: torchrun --nproc_per_node sets the number of processes")
    if nproc > 1:   # the data stages here, the training in N processes
        _check_gpus(cfg.device, nproc)
        if force:
            shutil.rmtree(out / "checkpoints" / "recommender", ignore_errors=True)
        for stage in _input_stages(cfg, out):
            _echo_stage(run_stage(stage, out))
        recommender_stage(cfg, out, force=force, announce=_announce)   # refuses before launching
        args = [str(config), "--out", str(out)] + [a for flag, v in (
            ("--device", device), ("--seeds", seeds), ("--epochs", epochs), ("--threads", threads)) if v
            for a in (flag, str(v))] + (["--force"] if force else [])
        code = distributed.launch(args, nproc)
        if code:
            raise typer.Exit(code)
        return
    if distributed.launched():
        distributed.init(cfg.device)
        try:
            _train_rank(cfg, out, force)
        except BaseException:
            distributed.shutdown(sync=False)
            raise
        distributed.shutdown()
        return
    if force:
        shutil.rmtree(out / "checkpoints" / "recommender", ignore_errors=True)
    for stage in _input_stages(cfg, out):
        _echo_stage(run_stage(stage, out))
    _echo_stage(run_stage(recommender_stage(cfg, out, force=force, announce=_announce), out, force=force))
    typer.echo((out / "recommender" / "metrics.md").read_text(encoding="utf-8"))


def _input_stages(cfg, out: Path) -> list:
    """The stages before the recommender stage: data and split, and items, embeddings and
    codes for a SID model on the run's own codes (checked by validate_run first)."""
    from ..recommender_stage import uses_run_codes
    from ..pipeline import input_stages, validate_run

    own_codes = any(uses_run_codes(m) for _, m, _ in cfg.recommenders())   # SID model on this run's codes
    if own_codes:
        validate_run(cfg, out)  # tokenizer parameters, paths inside the run: before any stage
    return input_stages(cfg, codes=own_codes)


def _announce(msg: str) -> None:
    typer.echo(msg, err=True)


def _echo_stage(r) -> None:
    what = "cached" if r.status == "cached" else f"{r.seconds:.1f}s"
    typer.echo(f"[{r.name:<11}] {what:>7}  -> {r.path}", err=True)


def _check_gpus(device: str, nproc: int) -> None:
    import torch

    from ..utils import resolve_device

    try:
        dev = resolve_device(device)
    except SidkitError as err:
        raise ConfigError(err.problem, "set device (or --device) to auto or cpu") from None
    if dev.type == "cuda" and nproc > torch.cuda.device_count():
        raise ConfigError(f"--nproc {nproc} asks for one GPU per process but {torch.cuda.device_count()} "
                          "are visible", f"use --nproc {torch.cuda.device_count()} or fewer, or --device cpu")


def _train_rank(cfg, out: Path, force: bool) -> None:
    """One process of a data-parallel job (in a process group): rank 0 runs the data
    stages while the others wait, then every rank trains (the recommender stage's
    function) and rank 0 alone writes the stage.  Rank 0 tells the others whether the
    stage runs at all (it may be cached)."""
    import dataclasses

    from ..training import distributed
    from ..pipeline import recommender_stage
    from ..stages import run_stage

    main = distributed.is_main()
    if main:
        if force:
            shutil.rmtree(out / "checkpoints" / "recommender", ignore_errors=True)
        for stage in _input_stages(cfg, out):
            _echo_stage(run_stage(stage, out))
    distributed.barrier()
    stage = recommender_stage(cfg, out, force=force, announce=_announce if main else None)
    if not main:
        if distributed.broadcast(None):   # the stage runs: train with rank 0, write nothing
            stage.fn(None, {name: out / name for name in stage.inputs})
        return

    def announced(tmp: Path, inp: dict[str, Path]):
        distributed.broadcast(True)
        return stage.fn(tmp, inp)

    r = run_stage(dataclasses.replace(stage, fn=announced), out, force=force)
    if r.status == "cached":
        distributed.broadcast(False)
    _echo_stage(r)
    typer.echo((out / "recommender" / "metrics.md").read_text(encoding="utf-8"))


def _find_models(run: Path) -> tuple[Path, list[Path]]:
    """(split dir, model dirs) of a run directory, its recommender/ dir, or one model dir."""
    run = Path(run)
    if (run / "model.json").is_file():
        models, root = [run], run.parents[3] if len(run.parents) > 3 else run
    else:
        rec = run / "recommender" if (run / "recommender").is_dir() else run
        if (rec / "models").is_dir():   # RUN/recommender: every model of every label
            models = sorted(p for p in (rec / "models").glob("*/seed-*") if (p / "model.json").is_file())
            root = rec.parent
        else:                           # RUN/recommender/models/<label>
            models = sorted(p for p in rec.glob("seed-*") if (p / "model.json").is_file())
            root = rec.parents[2] if len(rec.parents) > 2 else rec
    if not models:
        raise ArtifactError(f"no trained recommender under {run} (expected recommender/models/<label>/seed-*/model.json)",
                            "train one with `sidkit train CONFIG.toml --out RUN_DIR`")
    return root / "split", models


@handle_errors
def evaluate(
    run_dir: Path = typer.Argument(..., help="Run directory written by `sidkit train` (or a model directory)."),
    split: Optional[Path] = typer.Option(None, "--split", help="Split directory (default: RUN_DIR/split)."),
    role: str = typer.Option("test", "--role", help="test or valid."),
    mask_seen: bool = typer.Option(False, "--mask-seen/--no-mask-seen",
                                   help="Remove history items from the ranking (every model; never the target)."),
    tie_break: str = typer.Option("index", "--tie-break",
                                  help="Equal scores: 'index' (lower catalogue index first) or 'pessimistic' "
                                       "(every tied item ranks ahead of the target)."),
    ks: str = typer.Option("5,10,20", "--ks", help="Cut-offs of Recall@k and NDCG@k."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Evaluate trained recommenders on their split (full ranking; see docs/evaluation.md)."""
    from ..data import Split
    from ..eval import SequenceData, evaluate as run_eval, format_metrics_table, metric_names
    from ..recommender_stage import summarise
    from ..io import to_json
    from ..models import Recommender

    try:
        cutoffs = [int(k) for k in ks.split(",")]
    except ValueError:
        raise ConfigError(f"--ks must be comma-separated integers, got {ks!r}", "write e.g. --ks 5,10,20") from None
    split_dir, model_dirs = _find_models(run_dir)
    split_dir = split or split_dir
    data = SequenceData.from_split(Split.load(split_dir))
    rows, records = [], []
    for d in model_dirs:
        model = Recommender.load(d)
        m = run_eval(model, data, role, mask_seen=mask_seen, tie_break=tie_break, ks=cutoffs)
        m.pop("seconds")
        records.append({role: m})
        rows.append({"model": f"{d.parent.name} ({d.name})", **m})
    if as_json:
        typer.echo(to_json({"role": role, "mask_seen": mask_seen, "tie_break": tie_break, "models": [str(d) for d in model_dirs],
                            "records": [r[role] for r in records], "summary": summarise(records, (role,))}))
        return
    typer.echo(f"{role} metrics, full ranking over {data.n_items} items, "
               f"seen items masked: {'yes' if mask_seen else 'no'}, ties: {tie_break}\n")
    extra = [c for c in ("invalid_rate", "tie_rate") if any(c in r for r in rows)]
    typer.echo(format_metrics_table(rows, metric_names(sorted(set(cutoffs))) + extra + ["n_examples"]))
