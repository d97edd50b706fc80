"""Helpers shared by the CLI commands."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import typer

from ..errors import SidkitError


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a SidkitError into one clear message on stderr and exit code 1; SIGTERM
    becomes an exit (code 143) that lets atomic writes remove their temporary files."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from ..stages import sigterm_as_exit

        try:
            with sigterm_as_exit():
                return fn(*args, **kwargs)
        except SidkitError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None

    return wrapper


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are read as TOML literals when possible."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise SidkitError(f"parameter {item!r} is not of the form key=value",
                              "write e.g. --param n_iter=25")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = tomllib.loads(f"v = {v}")["v"]
        except tomllib.TOMLDecodeError:
            out[k.strip()] = v
    return out


def parse_sizes(text: str) -> list[int]:
    """``"16,16,8"`` -> ``[16, 16, 8]``; anything else is a ConfigError naming the value."""
    from ..errors import ConfigError

    parts = [p.strip() for p in text.split(",")]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"--sizes {text!r} is not a comma-separated list of integers",
                          "write e.g. --sizes 256,256,256") from None
    if any(k < 2 for k in sizes):
        raise ConfigError(f"--sizes {text!r}: every codebook size must be >= 2",
                          "write e.g. --sizes 256,256,256")
    return sizes


def print_table(rows: list[dict[str, Any]], file=None) -> None:
    """Print rows of dicts as an aligned text table."""
    file = file or sys.stdout
    if not rows:
        return
    cols = list(rows[0])
    fmt = [[_fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(f[i]) for f in fmt)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for f in fmt:
        print("  ".join(v.ljust(w) for v, w in zip(f, widths)), file=file)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
