"""Typer sub-commands, one module per area; ``sidkit.cli`` mounts them."""
