"""`sidkit encode-ray`: catalogue-scale embedding and encoding on Ray Data (docs/scale.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ._common import handle_errors, parse_params, parse_sizes


@handle_errors
def encode_ray(
    codes: Path = typer.Option(..., "--codes", help="A run's codes directory (RUN/codes) or a tokenizer directory; with --fit-sample, where the fitted tokenizer is written."),
    input: str = typer.Option(..., "--input", "-i", help="Parquet file or directory of items (local, or a URI the Ray workers can read)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output directory of Parquet files: the item id and sid_0..sid_{L-1}."),
    column: str = typer.Option("embedding", "--column", help="Embedding column (list<float> or fixed_size_list)."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Embed this text column on the workers instead of reading --column."),
    id_column: str = typer.Option("item_id", "--id-column", help="Item id column."),
    model: str = typer.Option("default", "--model", help="Text model: 'default' (all-MiniLM-L6-v2, offline) or a model directory present on every worker."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="L2-normalise text embeddings (as `sidkit embed`)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to run on (e.g. ray://HEAD:10001 or auto); default: a local Ray on this machine."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs of the local Ray (default: all)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Encoding actors (default: the cluster's CPUs less one)."),
    batch_size: int = typer.Option(4096, "--batch-size", help="Items per map_batches call."),
    device: str = typer.Option("cpu", "--device", help="Device of the text model on the workers (cpu or cuda)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output."),
    fit_sample: Optional[int] = typer.Option(None, "--fit-sample", help="First fit a new tokenizer on about N items sampled from --input, save it to --codes/tokenizer, then encode everything."),
    method: str = typer.Option("rqkmeans", "--method", help="With --fit-sample: tokenizer (rqkmeans, vq, hkm, rqvae, drq, gaoq)."),
    levels: Optional[int] = typer.Option(None, "--levels", help="With --fit-sample: number of semantic levels."),
    sizes: Optional[str] = typer.Option(None, "--sizes", help="With --fit-sample: codebook sizes, e.g. 256,256,256."),
    param: Optional[list[str]] = typer.Option(None, "--param", "-p", help="With --fit-sample: tokenizer parameter key=value (repeatable)."),
    resolve: bool = typer.Option(True, "--resolve-collisions/--no-resolve-collisions", help="With --fit-sample: add a disambiguation level."),
    seed: int = typer.Option(0, "--seed", help="With --fit-sample: sampling and tokenizer seed."),
) -> None:
    """Encode a Parquet catalogue to Semantic IDs on Ray Data (streaming, bounded memory).

    Same SIDs as the in-process encoder; a failed run leaves no output.  See docs/scale.md."""
    from ..scale.ray_encode import _check_own_output, encode_parquet, ray_session, require_ray
    from ..scale.ray_encode import fit_sample as fit_on_sample

    fit_only = [n for n, v in (("--method", method != "rqkmeans"), ("--levels", levels is not None),
                               ("--sizes", sizes is not None), ("--param", bool(param)),
                               ("--seed", seed != 0)) if v]
    if fit_only and fit_sample is None:
        raise ConfigError(f"{', '.join(fit_only)} only apply with --fit-sample",
                          "add --fit-sample N to fit a new tokenizer, or drop them")
    require_ray()
    kw = dict(id_column=id_column, column=column, text_column=text_column, model=model,
              normalize=normalize, batch_size=batch_size, workers=workers, device=device)
    if fit_sample is None:  # arguments and input are checked before Ray starts
        s = encode_parquet(codes, input, output, overwrite=overwrite, ray_address=ray_address,
                           num_cpus=num_cpus, **kw)
    else:
        tok = _make_tokenizer(method, levels, sizes, param, resolve, seed)
        if output.exists() and not overwrite:
            raise ConfigError(f"output {output} already exists", "pass another --output, or --overwrite")
        if output.exists():          # before the fit: --overwrite replaces only our own output
            _check_own_output(output)
        with ray_session(ray_address, num_cpus):  # one Ray session for both steps
            info = fit_on_sample(tok, input, codes, fit_sample, seed=seed, **kw)
            typer.echo(f"fitted {info['method']} on {info['n_sample']} of {info['n_total']} items "
                       f"({info['seconds_fit']:.1f}s) -> {Path(codes) / 'tokenizer'}", err=True)
            s = encode_parquet(codes, input, output, overwrite=overwrite, **kw)
    new = "" if s["n_new"] is None else f", {s['n_new']} new (outside the fitted catalogue)"
    typer.echo(f"{s['n_items']} items{new} -> {output} ({s['seconds']:.1f}s, "
               f"{s['n_items'] / max(s['seconds'], 1e-9):,.0f} items/s, {s['workers']} workers)")


def _make_tokenizer(method: str, levels, sizes, param, resolve: bool, seed: int):
    from ..config import config_from_dict
    from ..pipeline import make_tokenizer

    codes_cfg = {"method": method, "resolve_collisions": resolve, "params": parse_params(param)}
    if levels is not None:
        codes_cfg["n_levels"] = levels
    if sizes:
        codes_cfg["codebook_sizes"] = parse_sizes(sizes)
    cfg = config_from_dict({"seed": seed, "device": "cpu", "codes": codes_cfg}, "command line")
    tok = make_tokenizer(cfg)
    if hasattr(tok, "verbose"):
        tok.verbose = False
    tok._check_params()
    return tok
