"""Helpers the benchmark scripts share: synthetic data, machine description, RSS."""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path

import numpy as np


def clustered(n: int, d: int, n_centers: int = 1000, seed: int = 0, *, scale: float | None = None,
              chunk: int | None = 100_000) -> np.ndarray:
    """Gaussian blobs around ``n_centers`` centres (float32), generated ``chunk`` rows at
    a time (None: all at once).

    ``scale=None`` draws a per-centre scale in ``[0.1, 0.6)``; a number is the same
    scale for every centre.
    """
    rs = np.random.default_rng(seed)
    centers = rs.normal(size=(n_centers, d)).astype(np.float32)
    if scale is None:
        scales = rs.uniform(0.1, 0.6, size=n_centers).astype(np.float32)
    else:
        scales = np.full(n_centers, scale, dtype=np.float32)
    chunk = n if chunk is None else chunk
    X = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, max(chunk, 1)):
        e = min(n, s + chunk)
        z = rs.integers(0, n_centers, e - s)
        X[s:e] = centers[z] + scales[z, None] * rs.standard_normal((e - s, d), dtype=np.float32)
    return X


def zipf_unit(n: int, d: int, n_centers: int = 1000, seed: int = 0, *, a: float = 1.1,
              noise: float = 1.0, chunk: int = 100_000) -> np.ndarray:
    """Unit-normalised vectors around ``n_centers`` random directions whose cluster
    sizes follow a Zipf law (``P(cluster r) ~ 1 / r^a``; with ``a = 1.1`` the largest
    of 1000 clusters holds ~13% of the points, the smallest ~0.01%), closer to text
    embeddings than equal-sized blobs.  ``x = normalise(c + noise * g / sqrt(d))``
    with ``c`` a unit direction and ``g`` standard normal (float32, in chunks)."""
    rs = np.random.default_rng(seed)
    centers = rs.normal(size=(n_centers, d)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    p = 1.0 / np.arange(1, n_centers + 1) ** a
    p /= p.sum()
    scales = (noise * rs.uniform(0.5, 1.5, size=n_centers) / np.sqrt(d)).astype(np.float32)
    X = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, max(chunk, 1)):
        e = min(n, s + chunk)
        z = rs.choice(n_centers, size=e - s, p=p)
        x = centers[z] + scales[z, None] * rs.standard_normal((e - s, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        X[s:e] = x
    return X


def machine(*peers: str) -> dict:
    """CPU, cores, torch/python versions, the load average when the benchmark starts,
    and the versions of the named peer libraries (``"faiss"``, ``"sklearn"``) installed."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(),
            "python": platform.python_version(), "platform": platform.platform()}
    try:
        info["load_avg_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    for peer in peers:
        try:
            mod = __import__(peer)
        except ImportError:  # pragma: no cover
            continue
        info[peer] = mod.__version__
        if peer == "faiss":
            info["faiss_threads"] = mod.omp_get_max_threads()
    return info


def peak_rss_mb() -> float:
    """Peak RSS of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def current_rss_mb() -> float:
    """Current RSS (MB), from /proc (falls back to the peak elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return peak_rss_mb()


def ml100k_sid_run(tokenizer: str, work: Path) -> Path:
    """The run directory of ``sidkit run`` on ML-100K with ``[codes] method = tokenizer``
    (text embeddings) under ``work/sids-TOKENIZER``; cached stages are reused.

    ``TOKENIZER`` is ``METHOD-KxL`` for ``L`` levels of ``K`` codewords (e.g.
    ``rqkmeans-256x3``) or a method name alone: 24 x 24 x 24 for the methods with
    codebooks -- the sizing rule's output for ML-100K when the results and studies
    recorded under these names ran (the rule gives 256 x 3 since study 2) -- and
    GAOQ's own tree.
    """
    import re

    from sidkit.config import config_from_dict
    from sidkit.pipeline import run_pipeline

    codes: dict = {"method": tokenizer}
    if tokenizer != "gaoq":
        codes["codebook_sizes"] = [24, 24, 24]
    m = re.fullmatch(r"([a-z_]+)-(\d+)x(\d+)", tokenizer)
    if m:
        codes = {"method": m.group(1), "codebook_sizes": [int(m.group(2))] * int(m.group(3))}
    cfg = config_from_dict({"codes": codes, "diagnostics": {"report": False}}, f"sids-{tokenizer}")
    out = Path(work) / f"sids-{tokenizer}"
    run_pipeline(cfg, out)
    return out


MAX_LOAD_PER_CORE = 0.5


def require_quiet(allow_load: bool = False, max_per_core: float = MAX_LOAD_PER_CORE,
                  wait_s: float = 180.0) -> str | None:
    """Refuse to time on a busy machine.

    Other jobs on the cores distort ratios against a peer (OpenMP threads such as faiss's
    suffer more from sharing than torch's: the same fit was 0.85x faiss under load and
    2.3x on a quiet machine).  While the 1-minute load average exceeds ``max_per_core``
    per core this waits up to ``wait_s`` seconds (the average decays for a minute after a
    preceding benchmark ends), then exits with a message, unless ``allow_load``: then it
    returns the warning, which the benchmark prints and writes into its report.  None
    when quiet.
    """
    import sys
    import time

    cores = os.cpu_count() or 1
    deadline = time.monotonic() + wait_s
    while True:
        try:
            load = os.getloadavg()[0]
        except OSError:  # pragma: no cover - no load average on this platform
            return None
        if load <= max_per_core * cores:
            return None
        if allow_load or time.monotonic() >= deadline:
            break
        print(f"load average {load:.2f}: waiting for it to fall below {max_per_core * cores:.1f}", flush=True)
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
    msg = (f"load average {load:.2f} on {cores} cores is above {max_per_core} per core: other jobs are "
           "running, and timings against a peer would not hold on a quiet machine")
    if not allow_load:
        sys.exit(f"refusing to benchmark: {msg}. Wait for them to finish, or pass --allow-load to "
                 "measure anyway (the report then carries this warning).")
    print(f"WARNING: {msg}", flush=True)
    return "WARNING: " + msg
