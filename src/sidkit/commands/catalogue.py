"""`sidkit add-items RUN ITEMS`: new items join a trained run's SID models without retraining."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import DataError
from ._common import handle_errors


def read_items(path: Path, id_column: str = "item_id") -> "Any":
    """The ITEMS table (CSV, TSV, JSONL or a JSON list of objects) as a DataFrame of strings."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"items file {path} does not exist", "pass a CSV or JSONL file of the new items")
    suf = path.suffix.lower()
    try:
        if suf in (".jsonl", ".ndjson"):
            df = pd.read_json(path, lines=True, dtype=False)
        elif suf == ".json":
            df = pd.DataFrame(json.loads(path.read_text(encoding="utf-8")))
        elif suf in (".tsv", ".tab"):
            df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        else:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path} could not be read as a table ({type(e).__name__}: {str(e)[:200]})",
                        "write one item per row (CSV with a header, or JSON lines)") from None
    if id_column not in df.columns:
        raise DataError(f"{path} has no {id_column!r} column (columns: {list(df.columns)[:10]})",
                        "name the id column item_id, or pass --id-column")
    return df


def item_texts_for(run: Path, df, text_column: str | None) -> list[str]:
    """One text per row: the ``text_column`` as is, else the run's text template filled from
    the row's fields."""
    if text_column is not None:
        if text_column not in df.columns:
            raise DataError(f"the items have no {text_column!r} column", "pass --text-column with one of "
                            + ", ".join(map(str, df.columns)))
        return ["" if v is None else str(v) for v in df[text_column].tolist()]
    if "text" in df.columns:
        return ["" if v is None else str(v) for v in df["text"].tolist()]
    from ..io import read_json

    template = None
    meta_p = run / "items" / "meta.json"
    if meta_p.is_file():
        template = (read_json(meta_p).get("params") or {}).get("template")
    if template is None and (run / "data" / "items.json").is_file():
        from ..data import ItemTable
        from ..data.text import default_template

        template = default_template(ItemTable.load(run / "data"))
    if template is None:
        raise DataError("the items have no 'text' column and the run has no text template",
                        "add a text column (or pass --text-column), or precomputed --embeddings")
    out = []
    for n, row in enumerate(df.to_dict("records")):
        try:
            out.append(template.format_map({k: ("" if v is None else v) for k, v in row.items()}))
        except (KeyError, IndexError, ValueError) as e:
            raise DataError(f"row {n} of the items cannot fill the run's text template {template!r} "
                            f"({type(e).__name__}: {e})", "give every field the template names, or a text "
                            "column") from None
    return out


@handle_errors
def add_items(
    run_dir: Path = typer.Argument(..., help="A run directory written by sidkit run."),
    items: Path = typer.Argument(..., help="The new items: CSV/TSV/JSONL with an item_id column and a text "
                                 "column (or the fields of the run's text template), or ids only with "
                                 "--embeddings."),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="An .npy (items, dim) of precomputed "
                                              "embeddings, rows in the order of ITEMS."),
    id_column: str = typer.Option("item_id", "--id-column", help="Column of ITEMS holding the ids."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="Column holding each item's text "
                                              "(default: 'text' when present, else the run's template)."),
    device: str = typer.Option("cpu", "--device", help="Device of the text model."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Add new items to a trained run's SID models without retraining: encode them with the
    run's tokenizer (encode_new), insert their SIDs, persist atomically in RUN/catalogue."""
    from ..catalogue import add_items_to_run
    from ..io import load_npy

    df = read_items(items, id_column)
    ids = [str(v) for v in df[id_column].tolist()]
    if embeddings is not None:
        X = load_npy(embeddings)
        summary = add_items_to_run(run_dir, ids, embeddings=X, device=device)
    else:
        summary = add_items_to_run(run_dir, ids, texts=item_texts_for(run_dir, df, text_column), device=device)
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    typer.echo(f"added {summary['added']} item(s) to {run_dir} (catalogue {summary['version']}, "
               f"{summary['total_added']} added in all); SID models updated: "
               f"{', '.join(summary['models']) or 'none'}")
    for i, sid in list(summary["tokenizer_sids"].items())[:10]:
        per_model = {m: s[i] for m, s in summary["models"].items()}
        shown = sorted({"-".join(map(str, v)) for v in per_model.values()}) or ["-".join(map(str, sid))]
        typer.echo(f"  {i}: SID {', '.join(shown)}")
