"""``python -m sidkit.train CONFIG --out RUN [options]``: ``sidkit train`` as a module.

This is what torchrun starts for data-parallel training (docs/distributed.md)::

    torchrun --standalone --nproc_per_node 2 -m sidkit.train configs/causal.toml --out runs/ml-100k

``sidkit train CONFIG --out RUN --nproc 2`` runs the data stages and then the same
command.  Without torchrun it is plain ``sidkit train``.
"""

from __future__ import annotations

from typing import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``sidkit train`` with ``argv`` (default: the command line)."""
    import typer

    from .commands.train import train

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train)
    app(args=list(argv) if argv is not None else None, prog_name="python -m sidkit.train")


if __name__ == "__main__":
    main()
