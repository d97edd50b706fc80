"""The bad-input probe: sidkit used as a careless user and a hostile client would use it.

Every case runs the real command line (``python -m sidkit ...`` in a subprocess) or a
real HTTP request against a real ``sidkit serve`` on 127.0.0.1, on a tiny run made in
a temporary folder, and compares what happened with what should happen.  The table
goes to stdout and, with ``--write``, into ``docs/reliability.md`` between the
``<!-- probe:... -->`` markers of its section.

Usage::

    python benchmarks/probe.py                 # all cases (about 2 minutes on 2 cores)
    python benchmarks/probe.py --only cli      # the CLI and data cases
    python benchmarks/probe.py --write         # and update docs/reliability.md

Exit code 1 when any case does not behave as expected.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"


@dataclass
class Outcome:
    ok: bool
    observed: str


@dataclass
class Case:
    area: str
    what: str            # the command or request, as a person would type it
    expected: str
    run: Callable[["Env"], Outcome]


class Env:
    """A temporary folder with a tiny data set, a trained run and helpers to call sidkit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "tiny.csv"
        rng = np.random.default_rng(0)
        rows = ["user_id,item_id,timestamp"]
        for u in range(40):
            start = rng.integers(30)
            rows += [f"u{u},i{(start + t) % 30:02d},{1000 + 10 * t}" for t in range(10)]
        self.data.write_text("\n".join(rows) + "\n")
        self.run_dir = root / "run"

    def config(self, name: str, body: str, data: Path | None = None, user_core: int = 0) -> Path:
        p = self.root / f"{name}.toml"
        p.write_text(f'[data]\ndataset = "{data or self.data}"\nuser_core = {user_core}\n' + body)
        return p

    def file(self, name: str, text: str) -> Path:
        p = self.root / name
        p.write_text(text)
        return p

    def sidkit(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "SIDKIT_NO_PROGRESS": "1", "PYTHONWARNINGS": "default"}
        return subprocess.run([sys.executable, "-m", "sidkit", *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=self.root)


# ------------------------------------------------------------------ helpers
SASREC = '[model]\ntype = "sasrec"\nhidden = 8\nn_blocks = 1\nn_heads = 1\nmax_len = 6\n' \
         '[train]\nepochs = 1\nbatch_size = 16\nwarmup_steps = 0\n'
POPULARITY = '[model]\ntype = "popularity"\n'


def _first_line(p: subprocess.CompletedProcess) -> str:
    text = (p.stderr or "") + (p.stdout or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith(("error:", "fix:"))]
    msg = " / ".join(lines) if lines else (text.strip().splitlines() or [""])[-1]
    return f"exit {p.returncode}: {msg[:160]}"


def expect_error(args_of: Callable[[Env], list], *patterns: str, must_not: tuple[str, ...] = ("Traceback",),
                 check: Callable[[Env], bool] | None = None) -> Callable[[Env], Outcome]:
    def run(env: Env) -> Outcome:
        p = env.sidkit(*args_of(env))
        text = p.stdout + p.stderr
        ok = p.returncode == 1 and all(re.search(pt, text) for pt in patterns) \
            and not any(m in text for m in must_not) and (check is None or check(env))
        return Outcome(ok, _first_line(p))
    return run


def _weights(run: Path, label: str) -> dict[str, bytes]:
    base = run / "recommender" / "models" / label
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def _labels(run: Path) -> list[str]:
    return json.loads((run / "recommender" / "metrics.json").read_text())["labels"]


# ------------------------------------------------------------------ CLI and data cases
def cli_cases() -> list[Case]:
    c: list[Case] = []

    def add(what, expected, run):
        c.append(Case("cli", what, expected, run))

    add("`sidkit run bad.toml` with an unknown key `[data] colums = {}`",
        "exit 1, names the key", expect_error(lambda e: ["run", e.config("unknown", "colums = {}\n"), "--out", "r1"],
                                              r"unknown key 'data\.colums'"))
    add("`sidkit run` with `[data] user_core = -1`", "exit 1, names the key and the bound",
        expect_error(lambda e: ["run", e.config("neg", "", user_core=-1), "--out", "r2"], r"data\.user_core"))
    add("`sidkit run` with `[data] max_len = 20` (removed key)", "exit 1, points to `[model] max_len`",
        expect_error(lambda e: ["run", e.config("maxlen", "max_len = 20\n"), "--out", "r3"],
                     r"\[data\] max_len is not a key.*model"))
    add("`sidkit run` with `[data] repeats = \"drop\"`", "exit 1, lists keep / first / last",
        expect_error(lambda e: ["run", e.config("rep", 'repeats = "drop"\n'), "--out", "r4"], r"'keep'.*'first'.*'last'"))
    add("`sidkit run missing.toml`", "exit 1, names the file",
        expect_error(lambda e: ["run", e.root / "missing.toml", "--out", "r5"], r"missing\.toml"))

    def header_only(e: Env):
        return ["run", e.config("header", "", e.file("header.csv", "user_id,item_id,timestamp\n")), "--out", "r6"]
    add("`sidkit run` on a CSV with a header row only", "exit 1, 'holds no interactions' (not the k-core)",
        expect_error(header_only, r"holds no interactions", must_not=("Traceback", "k-core")))

    def nul_id(e: Env):
        p = e.root / "nul.csv"
        p.write_text(e.data.read_text().replace("u0,i", "u0,\x00i", 1))
        return ["run", e.config("nul", "", p), "--out", "r7"]
    add("`sidkit run` on a CSV whose item id holds a NUL byte", "exit 1, quotes the id",
        expect_error(nul_id, r"control characters, e\.g\. '\\x00i"))

    def tab_id(e: Env):
        p = e.root / "tab.csv"
        p.write_text(e.data.read_text().replace("u1,i", 'u1,"i', 1).replace(",1000\n", '\t",1000\n', 2))
        return ["run", e.config("tab", "", p), "--out", "r8"]
    add("`sidkit run` on a CSV whose quoted item id ends in a TAB", "exit 1, quotes the id (not merged with the id "
        "without it)", expect_error(tab_id, r"control characters"))

    def latin1(e: Env) -> Outcome:
        p = e.root / "latin1.csv"
        p.write_bytes(e.data.read_text().replace("i05", "café").encode("latin-1"))
        np.save(e.root / "emb.npy", np.random.default_rng(0).random((30, 8)).astype(np.float32))
        cfg = e.config("latin1", f'[embed]\nembeddings_file = "{e.root / "emb.npy"}"\n[codes]\ncodebook_sizes = [4, 4]\n'
                       '[diagnostics]\nreport = false\n', p)
        r = e.sidkit("run", cfg, "--out", "r9")
        ok = r.returncode == 0 and "is not valid UTF-8" in r.stderr and "read as Latin-1" in r.stderr
        warn = next((ln.strip() for ln in r.stderr.splitlines() if "UTF-8" in ln), "")
        return Outcome(ok, f"exit {r.returncode}; {warn[:150]}")
    add("`sidkit run` on a Latin-1 CSV", "runs, and says the file was read as Latin-1", latin1)

    add("`sidkit run` with a catalogue of 6 items and a model", "exit 1, the protocol's top 20, no 'k' key",
        expect_error(lambda e: ["run", e.config("small", _emb(e, 6) + POPULARITY, _small(e)), "--out", "r10"], r"top 20",
                     must_not=("Traceback", "use k <=")))
    add("`sidkit train` with `hidden = 16, n_heads = 3`", "exit 1 before any stage runs, names the model",
        expect_error(lambda e: ["train", e.config("heads", SASREC.replace("hidden = 8", "hidden = 16")
                                                  .replace("n_heads = 1", "n_heads = 3")), "--out", "r11"],
                     r"model 'sasrec': hidden=16 is not divisible by n_heads=3",
                     check=lambda e: not (e.root / "r11").exists()))

    # ---- a run's models are user data
    def train_two(e: Env) -> Outcome:
        a = e.sidkit("train", e.config("sasrec", SASREC), "--out", e.run_dir, "--device", "cpu")
        before = _weights(e.run_dir, "sasrec") if a.returncode == 0 else {}
        b = e.sidkit("train", e.config("pop", POPULARITY), "--out", e.run_dir)
        ok = a.returncode == b.returncode == 0 and _labels(e.run_dir) == ["sasrec", "popularity"] \
            and _weights(e.run_dir, "sasrec") == before
        return Outcome(ok, f"exit {a.returncode}, {b.returncode}; models {_labels(e.run_dir) if b.returncode == 0 else '?'}"
                           f", sasrec files {'unchanged' if ok else 'CHANGED'}")
    add("`sidkit train sasrec.toml --out RUN`, then `sidkit train popularity.toml --out RUN`",
        "both models in RUN, SASRec's files unchanged", train_two)

    def same_label(e: Env) -> Outcome:
        before = _weights(e.run_dir, "sasrec")
        p = e.sidkit("train", e.config("sasrec16", SASREC.replace("hidden = 8", "hidden = 16")), "--out", e.run_dir)
        ok = p.returncode == 1 and "--force" in p.stderr and _weights(e.run_dir, "sasrec") == before
        return Outcome(ok, _first_line(p))
    add("`sidkit train` of another SASRec config (same label) into RUN", "exit 1, names the label, what differs "
        "and --force; nothing changes", same_label)

    def forced(e: Env) -> Outcome:
        p = e.sidkit("train", e.root / "sasrec16.toml", "--out", e.run_dir, "--force")
        ok = p.returncode == 0 and "replacing model 'sasrec'" in p.stderr and _labels(e.run_dir) == ["sasrec", "popularity"]
        msg = next((ln for ln in p.stderr.splitlines() if "replacing" in ln), "")
        return Outcome(ok, f"exit {p.returncode}; {msg[:120]}; models {_labels(e.run_dir)}")
    add("... the same with `--force`", "replaced, announced; popularity kept", forced)

    def damaged(kind: str):
        def run(e: Env) -> Outcome:
            copy = e.root / f"run-{kind}"
            shutil.copytree(e.run_dir, copy)
            w = copy / "recommender" / "models" / "sasrec" / "seed-0" / "weights.safetensors"
            b = w.read_bytes()
            w.write_bytes({"truncated": b[: len(b) // 2], "empty": b"", "garbage": bytes(range(256)) * 4}[kind])
            p = e.sidkit("evaluate", copy)
            ok = p.returncode == 1 and "weights.safetensors" in p.stderr and "Traceback" not in p.stderr + p.stdout
            return Outcome(ok, _first_line(p))
        return run
    for kind in ("truncated", "empty", "garbage"):
        add(f"`sidkit evaluate RUN` with a {kind} `weights.safetensors`", "exit 1, names the file and the fix",
            damaged(kind))

    def bad_json(e: Env) -> Outcome:
        copy = e.root / "run-json"
        shutil.copytree(e.run_dir, copy)
        (copy / "recommender" / "models" / "popularity" / "seed-0" / "model.json").write_text("{\"artifact\": ")
        p = e.sidkit("evaluate", copy)
        return Outcome(p.returncode == 1 and "model.json" in p.stderr and "Traceback" not in p.stderr, _first_line(p))
    add("`sidkit evaluate RUN` with a truncated `model.json`", "exit 1, names the file", bad_json)
    add("`sidkit evaluate RUN --tie-break optimistic`", "exit 1, lists the rules",
        expect_error(lambda e: ["evaluate", e.run_dir, "--tie-break", "optimistic"], r"'index'.*'pessimistic'"))
    add("`sidkit evaluate not-a-run/`", "exit 1, says how to train one",
        expect_error(lambda e: ["evaluate", e.root], r"no trained recommender"))

    def file_in_stage(e: Env) -> Outcome:
        copy = e.root / "run-user"
        shutil.copytree(e.run_dir, copy)
        (copy / "split" / "my-notes.txt").write_text("mine")
        p = e.sidkit("train", e.config("pop-core", POPULARITY.replace("[model]", "split = \"temporal\"\n[model]")),
                     "--out", copy)
        ok = p.returncode == 1 and (copy / "split" / "my-notes.txt").read_text() == "mine"
        return Outcome(ok, _first_line(p) + ("; the file is intact" if ok else ""))
    add("`sidkit train` that would rewrite RUN/split while the user's file lies in it", "exit 1, the file is kept",
        file_in_stage)
    add("`sidkit run cfg.toml --out a-file.txt`", "exit 1, 'is not a folder'",
        expect_error(lambda e: ["run", e.config("pop2", POPULARITY), "--out", e.file("a-file.txt", "x")],
                     r"not a folder"))
    return c


def _emb(e: Env, n: int) -> str:
    np.save(e.root / f"emb{n}.npy", np.random.default_rng(0).random((n, 8)).astype(np.float32))
    return f'[embed]\nembeddings_file = "{e.root / f"emb{n}.npy"}"\n[codes]\ncodebook_sizes = [2, 2]\n'


def _small(e: Env) -> Path:
    p = e.root / "small.csv"
    p.write_text("user_id,item_id,timestamp\n" + "".join(f"u1,i{t},{t}\n" for t in range(6)))
    return p


AREAS = {"cli": cli_cases}


# ------------------------------------------------------------------ driver
def table(results: list[tuple[Case, Outcome]]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| # | request or command | expected | observed | as expected |", "|---:|---|---|---|:---:|"]
    for i, (case, out) in enumerate(results, 1):
        lines.append(f"| {i} | {esc(case.what)} | {esc(case.expected)} | `{esc(out.observed)}` | "
                     f"{'yes' if out.ok else '**NO**'} |")
    return "\n".join(lines)


def write_doc(area: str, text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else "# Reliability\n"
    start, end = f"<!-- probe:{area}:start -->", f"<!-- probe:{area}:end -->"
    block = f"{start}\n{text}\n{end}"
    if start in doc and end in doc:
        doc = doc[:doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    DOC.write_text(doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(AREAS), help=f"comma-separated areas ({', '.join(AREAS)})")
    ap.add_argument("--write", action="store_true", help="update the tables in docs/reliability.md")
    args = ap.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory(prefix="sidkit-probe-") as tmp:
        env = Env(Path(tmp))
        for area in args.only.split(","):
            results = []
            for case in AREAS[area]():
                t0 = time.perf_counter()
                try:
                    out = case.run(env)
                except Exception as e:  # the probe itself must not hide a case
                    out = Outcome(False, f"probe error: {type(e).__name__}: {e}")
                results.append((case, out))
                failed += not out.ok
                print(f"[{'ok' if out.ok else 'FAIL'}] {case.what}  ({time.perf_counter() - t0:.1f}s)\n"
                      f"       {out.observed}", flush=True)
            text = (f"{sum(o.ok for _, o in results)} of {len(results)} cases as expected "
                    f"(`python benchmarks/probe.py --only {area}`, {time.strftime('%Y-%m-%d')}).\n\n"
                    + table(results))
            print("\n" + text + "\n")
            if args.write:
                write_doc(area, text)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
