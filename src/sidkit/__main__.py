"""`python -m sidkit ...` runs the `sidkit` command line."""

from .cli import app

if __name__ == "__main__":
    app(prog_name="sidkit")
