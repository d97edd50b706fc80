"""The ``sidkit`` command line (Typer). Thin: every command calls the Python API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from .commands._common import handle_errors, parse_params, parse_sizes, print_table

app = typer.Typer(
    help="sidkit: Semantic IDs for generative recommendation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _mount() -> None:
    from .commands import data as data_cmd
    from .commands import diagnose as diag_cmd

    app.add_typer(data_cmd.app, name="data", help="Fetch and inspect data sets.")
    app.command("diagnose")(diag_cmd.diagnose)
    app.command("compare")(diag_cmd.compare)
    from .commands import train as train_cmd

    app.command("train")(train_cmd.train)
    app.command("evaluate")(train_cmd.evaluate)
    from .commands import experiment as experiment_cmd

    app.command("experiment")(experiment_cmd.experiment)
    from .commands import serve as serve_cmd

    app.command("serve")(serve_cmd.serve)

    from .commands import scale as scale_cmd

    app.command("encode-ray")(scale_cmd.encode_ray)

    from .commands import catalogue as catalogue_cmd

    app.command("add-items")(catalogue_cmd.add_items)


@app.command()
def version() -> None:
    """Print the sidkit version."""
    from . import __version__

    typer.echo(__version__)


@app.command()
@handle_errors
def run(
    config: Optional[Path] = typer.Argument(None, help="TOML experiment config (default: MovieLens-100K, RQ-KMeans)."),
    out: Path = typer.Option(Path("runs/ml-100k"), "--out", "-o", help="Run directory."),
    force: bool = typer.Option(False, "--force", help="Rerun every stage, even unchanged ones."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda (overrides the config)."),
    method: Optional[str] = typer.Option(None, "--method", help="Tokenizer (overrides [codes] method)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Maximum training epochs of every model."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                          help="Torch CPU threads (default: torch's, one per core); give "
                                               "each of several jobs on one machine its share of the cores."),
) -> None:
    """Run the pipeline: data -> split -> items -> embeddings -> codes -> recommenders -> diagnostics.

    Without CONFIG: MovieLens-100K, RQ-KMeans Semantic IDs, and popularity, SASRec and the
    causal SID model trained and evaluated (the settings of src/sidkit/default.toml)."""
    from .config import load_config
    from .data import format_info
    from .pipeline import run_pipeline

    from .commands.train import with_overrides

    cfg = with_overrides(load_config(config), device, None, epochs, method)
    if threads:
        import torch

        torch.set_num_threads(threads)

    def on_stage(r) -> None:
        what = "cached" if r.status == "cached" else f"{r.seconds:.1f}s"
        if r.reason:
            typer.echo(f"[{r.name:<11}] {r.reason}; rerunning", err=True)
        typer.echo(f"[{r.name:<11}] {what:>7}  -> {r.path}", err=True)

    res = run_pipeline(cfg, out, force=force, on_stage=on_stage)
    typer.echo("\nData")
    typer.echo(format_info(res.summary("data")))
    typer.echo("\nSemantic IDs")
    print_sid_summary(res.summary("codes"), res.summary("diagnostics"))
    if any(r.name == "recommender" for r in res.stages):
        print_recommender_summary(res.summary("recommender"))
    typer.echo("\nTime per stage (s; cached stages cost nothing)")
    print_table([{"stage": r.name, "status": r.status, "seconds": round(r.seconds, 1) if r.status == "ran" else 0.0}
                 for r in res.stages] + [{"stage": "total", "status": "",
                                          "seconds": round(sum(r.seconds for r in res.stages if r.status == "ran"), 1)}])
    report = out / "diagnostics" / "report.html"
    if report.exists():
        typer.echo(f"\nReport: {report}")


def print_recommender_summary(summary: dict) -> None:
    """The recommenders' test metrics (means over seeds), a row per model."""
    from .eval.metrics import metric_names

    typer.echo(f"\nRecommendation (test, leave-one-out, full ranking, seen items masked: "
               f"{'yes' if summary.get('mask_seen') else 'no'})")
    names = [m for m in metric_names() if m.startswith(("recall", "ndcg", "mrr"))]
    print_table([{"model": label, "seeds": s["n_seeds"], **{m: s["test"].get(m) for m in names},
                  "train s": round(s["train_seconds"], 1)}
                 for label, s in ((lb, summary["models"][lb]) for lb in summary["labels"])])


def print_sid_summary(codes_summary: dict, diag: dict | None = None) -> None:
    s = codes_summary
    typer.echo(f"{s['n_items']} items, method {s['method']}, codebook sizes "
               f"{s['codebook_sizes']}, collision rule {s['collision_rule']}")
    rows = []
    n = len(s["levels"])
    for lv in s["levels"]:
        extra = s["collision_rule"] != "none" and lv.get("level") == n
        rows.append({"level": f"{lv.get('level')}{' (disambig.)' if extra else ''}",
                     "K": lv.get("K"), "used": lv.get("used"), "perplexity": lv.get("perplexity"),
                     "H/log2K": lv.get("norm_entropy"), "gini": lv.get("gini"),
                     "top-1% share": lv.get("top1pct_share")})
    print_table(rows)
    for line in collision_lines(s):
        typer.echo(line)
    if not diag:
        return
    if diag.get("rel_mse") is not None:
        typer.echo(f"relative reconstruction MSE (semantic levels) {diag['rel_mse']:.4f}")
    if diag.get("rel_mse_prefix_mean") is not None:
        typer.echo(f"relative MSE of the mean of the items sharing a semantic SID {diag['rel_mse_prefix_mean']:.4f}")
    if diag.get("sid_k_eff"):
        k = ", ".join(f"s={sc:g}: {v:.1f}" for sc, v in zip(diag["overlap_scales"], diag["sid_k_eff"]))
        typer.echo(f"effective capacity K_eff of the whole SID ({k})")
    if diag.get("sid_k_eff_member"):
        k = ", ".join(f"s={sc:g}: {v:.1f}" for sc, v in zip(diag["overlap_scales"], diag["sid_k_eff_member"]))
        typer.echo(f"K_eff of the whole SID, member-distribution model ({k})")
    if diag.get("sid_change_rate"):
        ch = ", ".join(f"s={sc}: {v:.3f}" for sc, v in diag["sid_change_rate"].items())
        typer.echo(f"SID change rate under perturbation ({ch})")
    if diag.get("soft_matching_auc") is not None:
        typer.echo(f"soft-matching AUC, co-engaged vs random pairs {diag['soft_matching_auc']:.3f}")
    if diag.get("hourglass"):
        typer.echo(f"hourglass: {diag['hourglass'].get('verdict', '')}")


def collision_lines(s: dict) -> list[str]:
    """Semantic collisions (before the disambiguation token) first, then final SIDs."""
    c, sem = s["collisions"], s.get("semantic_collisions")
    out = []
    if sem is not None and s.get("collision_rule", "none") != "none":
        out.append(f"semantic collisions (before the disambiguation token): rate {sem['rate']:.4f}, "
                   f"items sharing their semantic SID {sem['share_in_collision']:.4f} "
                   f"({sem['share_in_collision']:.1%}), largest group {sem['largest_group']}, "
                   f"{sem['n_unique']} distinct semantic SIDs")
        out.append(f"final SIDs ({s['collision_rule']}): collision rate {c['rate']:.4f}, "
                   f"largest group {c['largest_group']}")
    else:
        out.append(f"semantic collisions (no disambiguation token): rate {c['rate']:.4f}, "
                   f"items sharing their SID {c['share_in_collision']:.4f} "
                   f"({c['share_in_collision']:.1%}), largest group {c['largest_group']}")
    return out


@app.command()
@handle_errors
def embed(
    dataset: str = typer.Argument(..., help="Data set name (ml-100k) or path."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (embeddings.npy + .json)."),
    model: str = typer.Option("default", help="'default' (all-MiniLM-L6-v2, offline) or a model directory."),
    template: Optional[str] = typer.Option(None, help="Item text template, e.g. 'Title: {title}'."),
    batch_size: int = typer.Option(64, help="Texts per batch."),
    normalize: bool = typer.Option(True, help="L2-normalise the embeddings."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    method: str = typer.Option("text", help="text (sentence embeddings) or famae (field embeddings, docs/famae.md)."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="FAMAE parameter key=value, any [embed.famae] key (repeatable)."),
    seed: int = typer.Option(0, help="Random seed (FAMAE)."),
    user_core: int = typer.Option(5, "--user-core", help="FAMAE: k-core on users before the leave-one-out split ([data] user_core)."),
) -> None:
    """Embed the items of a data set: their texts with a sentence-transformers model, or
    (--method famae) FAMAE field embeddings trained on the leave-one-out training split."""
    from .data import item_texts, load_dataset
    from .embed import TextEmbedder
    from .errors import ConfigError, DataError
    from .types import Embeddings

    if method not in ("text", "famae"):
        raise ConfigError(f"unknown embedding method {method!r}", "use --method text or --method famae")
    if param and method != "famae":
        raise ConfigError("--param is for --method famae", "drop --param, or add --method famae")
    ds = load_dataset(dataset)
    if ds.items is None:
        raise DataError(f"data set {dataset!r} has no item table to embed",
                        "pass a data set with item metadata")
    if method == "famae":
        _embed_famae(ds, out, parse_params(param), seed, device, user_core)
        return
    texts = item_texts(ds.items, template)
    vec = TextEmbedder(model, batch_size, normalize, device).embed(texts)
    Embeddings(vec, ds.items.items.astype(str).to_numpy(), source="text",
               meta={"model": model, "normalize": normalize}).save(out)
    typer.echo(f"{vec.shape[0]} items x {vec.shape[1]} dims -> {out}")


def _embed_famae(ds, out: Path, params: dict, seed: int, device: str, user_core: int) -> None:
    """FAMAE on the data set's default preprocessing and leave-one-out training split."""
    from .config import config_from_dict
    from .data import make_split, preprocess
    from .embed.famae import famae_from_config

    cfg = config_from_dict({"seed": seed, "device": device, "data": {"user_core": user_core},
                            "embed": {"method": "famae", "famae": params}}, "command line")
    d = cfg.data
    split = make_split(preprocess(ds.interactions, user_k=d.user_core, item_k=d.item_core, repeats=d.repeats),
                       d.split)
    emb = famae_from_config(cfg.embed.famae, seed=seed, device=device).fit(ds.items, split.train).embeddings()
    emb.save(out)
    bv = emb.meta["best_valid"] or {}
    acc = ", ".join(f"{k} {v:.3f}" for k, v in (bv.get("field_accuracy") or {}).items() if v is not None)
    typer.echo(f"FAMAE: {emb.meta['epochs']} epochs in {emb.meta['train_seconds']:.1f}s (best {emb.meta['best_epoch']}); "
               f"validation masked-field accuracy: {acc or 'n/a'}")
    typer.echo(f"{len(emb)} items x {emb.dim} dims -> {out}")


@app.command()
@handle_errors
def tokenize(
    embeddings: Path = typer.Argument(..., help="Embeddings directory or a .npy file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (codes + tokenizer)."),
    method: str = typer.Option("rqkmeans", help="Tokenizer: rqkmeans, vq, hkm, rqvae, drq, gaoq."),
    levels: Optional[int] = typer.Option(None, help="Number of semantic levels (default: the number of --sizes, else 3)."),
    sizes: Optional[str] = typer.Option(None, help="Codebook sizes per level, e.g. 16,16,16 (default: from N)."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="Extra tokenizer parameter key=value (repeatable)."),
    resolve: bool = typer.Option(True, "--resolve-collisions/--no-resolve-collisions", help="Add a disambiguation level."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """Fit a tokenizer on embeddings and write the items' Semantic IDs."""
    import numpy as np

    from .config import config_from_dict
    from .io import load_npy
    from .pipeline import make_tokenizer, sid_summary
    from .tokenizers import resolve_collisions
    from .types import Embeddings

    codes_cfg = {"method": method, "resolve_collisions": resolve, "params": parse_params(param)}
    if levels is not None:
        codes_cfg["n_levels"] = levels
    if sizes:
        codes_cfg["codebook_sizes"] = parse_sizes(sizes)
    cfg = config_from_dict({"seed": seed, "device": device, "codes": codes_cfg}, "command line")
    tok = make_tokenizer(cfg)
    tok._check_params()  # bad -p values fail before the embeddings are read
    if embeddings.suffix == ".npy":
        vec = load_npy(embeddings)
        emb = Embeddings(vec, np.arange(len(vec)).astype(str), source=str(embeddings))
    else:
        emb = Embeddings.load(embeddings)
    tok.fit(emb.vectors)
    codes = tok.encode(emb.vectors).replace(item_ids=emb.item_ids)
    if resolve and codes.has_collisions():
        codes = resolve_collisions(codes)
    tok.save(out / "tokenizer")
    codes.save(out / "codes")
    print_sid_summary(sid_summary(codes))
    typer.echo(f"-> {out}")


_mount()


def main() -> None:  # pragma: no cover
    app(sys.argv[1:])
