"""What a user reads must be true: CLI help texts and the README's statements about
defaults, checked against the repository and the code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import typer.main

from sidkit.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# a path in a help text that names a file of this repository starts with one of these
REPO_DIRS = ("configs", "docs", "src", "benchmarks", "tests", "examples", ".ci")
PATH = re.compile(r"(?<![\w./{}$-])(?:[\w.-]+/)+[\w.{}-]*[\w}]")


def _help_texts():
    """(command, text) for every help string of the CLI: commands, groups, options, arguments."""
    def walk(cmd, path):
        yield path, cmd
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            yield from walk(sub, f"{path} {name}")

    for path, cmd in walk(typer.main.get_command(app), "sidkit"):
        for text in (cmd.help, cmd.short_help, cmd.epilog, *(getattr(p, "help", None) for p in cmd.params)):
            if text:
                yield path, text


def test_every_repository_path_named_in_a_cli_help_text_exists():
    named = [(cmd, p) for cmd, text in _help_texts() for p in PATH.findall(text)
             if p.split("/")[0] in REPO_DIRS]
    assert ("sidkit run", "src/sidkit/default.toml") in named      # the pattern finds paths
    missing = [(cmd, p) for cmd, p in named if not (ROOT / p).exists()]
    assert not missing, f"help texts name files that do not exist: {missing}"
    # the help of `sidkit run` names the file the default config really comes from
    from sidkit.config import DEFAULT_CONFIG

    assert Path(DEFAULT_CONFIG).resolve() == (ROOT / "src" / "sidkit" / "default.toml").resolve()


def _readme_config_block() -> dict:
    section = README[README.index("## Experiment configs"):]
    return tomllib.loads(re.search(r"```toml\n(.*?)```", section, re.S).group(1))


def test_readme_config_block_shows_the_defaults():
    """The README's "these are the defaults" config parses and equals the defaults, key by key."""
    from sidkit.config import SASRecConfig, config_from_dict

    doc = _readme_config_block()
    shown = config_from_dict(doc, "README.md")
    default = config_from_dict({})
    assert (shown.name, shown.seed, shown.device) == (default.name, default.seed, default.device)
    for table in ("data", "embed", "codes", "diagnostics", "train"):
        for key in doc[table]:
            if (table, key) == ("embed", "template"):   # "default depends on the data set"
                continue
            assert getattr(getattr(shown, table), key) == getattr(getattr(default, table), key), (table, key)
    assert shown.model == SASRecConfig(), "the README's [model] table must show SASRec's defaults"


def test_readme_tokenizer_table_marks_the_real_default_size():
    """The quality table marks as the default the codebook size the sizing rule gives
    the ML-100K catalogue (1,682 items), and no other row."""
    from sidkit.tokenizers import default_codebook_sizes

    k = default_codebook_sizes(1682, 3)[0]
    section = README[README.index("**Tokenizer quality on MovieLens-100K"):]
    rows = [ln for ln in section.splitlines() if ln.startswith("| ")][2:]
    rows = rows[:next(i for i, ln in enumerate(rows + [""]) if not re.match(r"^\| \d+", ln))]
    marked = [ln for ln in rows if re.match(r"^\| \d+ \(default", ln)]
    assert [int(ln[2:].split()[0]) for ln in marked] == [k], rows


def test_readme_says_how_movielens_is_fetched():
    """Not "offline": downloaded from PyPI (the recbole wheel) on first use, checked, cached."""
    from sidkit.data.fetch import RECBOLE_REQUIREMENT

    assert "fetched offline" not in README
    data = README[README.index("- **Data**"):README.index("- **Embeddings**")]
    flat = " ".join(data.split())
    assert f"`{RECBOLE_REQUIREMENT}` wheel" in flat and "PyPI" in flat and "first use" in flat
    assert re.search(r"sha-?256", flat, re.I) and "cache" in flat
