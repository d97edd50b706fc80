"""Data-parallel training (torch.distributed, gloo on CPU): two processes follow the loss
curve of one process at the same global batch, only rank 0 writes, resume is exact, and
`sidkit train --nproc 2` (torchrun) trains end to end.

Tolerance of the curve comparison: each rank computes the loss and gradient of its share
of a global batch and DistributedDataParallel sums the shares' gradients, where one
process sums over the whole batch inside each kernel; the order of the float32 additions
differs, so the results differ in the last bits, and AdamW carries the differences
forward.  Measured over these 3 epochs: per-epoch losses within 1.5e-7 relative (the test
allows 2e-5); weights within 2e-4 in relative norm (the test allows 1e-3) -- the largest
differences sit in the attention key biases, whose true gradient is zero (softmax ignores
them), so AdamW scales the rounding noise left in it into steps of about the learning
rate.  Dropout is off in that comparison: each rank draws its own dropout masks, which no
single process reproduces.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _training import write_tiny_interactions
from sidkit.config import config_from_dict
from sidkit.recommender_stage import train_and_evaluate
from sidkit.models import CausalSID, Recommender
from test_causal_sid import cyclic_data, toy_codes

WORLD = 2
SIDKIT = [sys.executable, "-c", "from sidkit.cli import app; app(prog_name='sidkit')"]
MODELS = [
    {"type": "causal_sid", "label": "causal", "hidden": 16, "n_layers": 1, "n_heads": 2, "max_len": 6,
     "dropout": 0.0},
    {"type": "sasrec", "label": "sasrec", "hidden": 8, "n_blocks": 1, "n_heads": 1, "max_len": 6, "dropout": 0.0},
    {"type": "tiger", "label": "tiger", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_kv": 8, "d_ff": 32,
     "max_len": 4, "targets_per_user": 3, "dropout": 0.0},
]
# batch 15: shares of 8 and 7 samples (unequal numbers of loss terms per rank)
TRAIN = {"epochs": 3, "patience": 5, "lr": 3e-3, "warmup_steps": 2, "batch_size": 15, "eval_every": 1}


def _config(codes: Path):
    models = [dict(m, codes=str(codes)) if m["type"] != "sasrec" else m for m in MODELS]
    return config_from_dict({"data": {"dataset": "cyclic"}, "models": models, "train": TRAIN,
                             "device": "cpu"})


def _tiny_run_config(tmp: Path) -> Path:
    """A tiny RecBole data set (30 items, 40 users x 10) and a SASRec `sidkit train` config."""
    d = write_tiny_interactions(tmp)
    cfg = tmp / "sasrec.toml"
    cfg.write_text(f'device = "cpu"\n\n[data]\ndataset = "{d}"\nuser_core = 0\n\n[model]\ntype = "sasrec"\n'
                   'hidden = 8\nn_blocks = 1\nn_heads = 1\nmax_len = 6\ndropout = 0.0\n\n[train]\nepochs = 2\n'
                   'batch_size = 16\nwarmup_steps = 2\n')
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    """One rank: the experiment's three models (each rank with its own output folder, a
    shared checkpoint folder), an interrupted and resumed causal run with dropout, then
    what a torchrun-started `sidkit train` does in each rank, twice (trained, then cached)."""
    from datetime import timedelta

    import torch.distributed as dist

    from sidkit.commands.train import _train_rank
    from sidkit.config import load_config
    from sidkit.training import loop as train_mod

    torch.set_num_threads(1)
    tmp = Path(tmp)
    # a short timeout: a rank left waiting by a broken protocol fails the test instead of hanging it
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    saves, loops = [], []
    real, real_loop = train_mod.save_checkpoint, train_mod.train_loop

    def recording(path, **kw):
        saves.append([Path(path).parent.name, Path(path).name, kw["state"]["epoch"]])
        real(path, **kw)

    def counting(model, *a, **kw):
        loops.append(model.name)
        return real_loop(model, *a, **kw)

    train_mod.save_checkpoint = recording
    train_mod.train_loop = counting
    data = cyclic_data()
    doc = train_and_evaluate(_config(tmp / "codes"), data, tmp / f"out-rank{rank}",
                             checkpoint_root=tmp / "ckpt", progress=False)
    assert (doc is None) == (rank > 0)

    # exact resume under DDP: dropout on (per-rank RNG states in the checkpoint)
    kw = dict(codes=toy_codes(), seed=3, device="cpu", progress=False)
    cfg = dict(TRAIN, epochs=4)
    model = dict(MODELS[0], dropout=0.3)
    model.pop("type"), model.pop("label")
    full = CausalSID(**model).fit(cyclic_data(), train=cfg, checkpoint_dir=tmp / "resume-full", **kw)

    def stop(rec):
        if rec["epoch"] == 2:
            raise KeyboardInterrupt

    try:
        CausalSID(**model).fit(cyclic_data(), train=cfg, checkpoint_dir=tmp / "resume", callbacks=[stop], **kw)
    except KeyboardInterrupt:
        pass
    dist.barrier()   # rank 0's checkpoint of epoch 2 is on disk before any rank reads it
    resumed = CausalSID(**model).fit(cyclic_data(), train=cfg, checkpoint_dir=tmp / "resume", **kw)
    same = all(torch.equal(a, b) for a, b in zip(full.module_.state_dict().values(),
                                                 resumed.module_.state_dict().values()))

    # `torchrun -m sidkit train` in each rank: rank 0 runs the data stages while rank 1
    # waits, both train, rank 0 writes; the second time the stage is cached and rank 0
    # tells rank 1, so neither trains
    run_cfg = load_config(tmp / "sasrec.toml")
    n_loops = len(loops)
    _train_rank(run_cfg, tmp / "run", force=False)
    trained = len(loops) - n_loops
    _train_rank(run_cfg, tmp / "run", force=False)
    (tmp / f"rank{rank}.json").write_text(json.dumps({
        "saves": saves, "full": [h["loss"] for h in full.history_],
        "resumed": [h["loss"] for h in resumed.history_], "same_weights": same,
        "valid": [h.get("valid") for h in full.history_],
        "run_loops": [trained, len(loops) - n_loops - trained]}))
    from sidkit.training import distributed
    distributed.shutdown()   # a barrier first: a rank that leaves early can abort its peer at exit
    # Leave without the interpreter's finalisation: gloo's worker threads, still referenced
    # by the DDP models, were destroyed there and aborted a rank now and then ("terminate
    # called without an active exception", SIGABRT) after it had written its results.
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two-process run (spawned) and the single-process reference (here)."""
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("ddp")
    toy_codes().save(tmp / "codes")
    _tiny_run_config(tmp)
    mp.spawn(_worker, args=(WORLD, _free_port(), str(tmp)), nprocs=WORLD, join=True)
    train_and_evaluate(_config(tmp / "codes"), cyclic_data(), tmp / "single", progress=False)
    return tmp


def _history(out: Path, label: str):
    return Recommender.load(out / "models" / label / "seed-0").history_


@pytest.mark.parametrize("label", [m["label"] for m in MODELS])
def test_two_processes_follow_the_single_process_loss_curve(runs, label):
    one, two = _history(runs / "single", label), _history(runs / "out-rank0", label)
    assert len(one) == len(two) == TRAIN["epochs"]
    l1, l2 = np.array([h["loss"] for h in one]), np.array([h["loss"] for h in two])
    np.testing.assert_allclose(l2, l1, rtol=2e-5, atol=0)
    assert l1[-1] < l1[0]                       # it trains
    m1 = Recommender.load(runs / "single" / "models" / label / "seed-0")
    m2 = Recommender.load(runs / "out-rank0" / "models" / label / "seed-0")
    assert m1.best_epoch_ == m2.best_epoch_
    s1, s2 = m1._state(), m2._state()
    assert s1.keys() == s2.keys()
    w1 = np.concatenate([np.ravel(s1[k]).astype(np.float64) for k in sorted(s1)])
    w2 = np.concatenate([np.ravel(s2[k]).astype(np.float64) for k in sorted(s1)])
    assert np.linalg.norm(w2 - w1) <= 1e-3 * np.linalg.norm(w1)


def test_only_rank_0_writes_checkpoints_models_and_metrics(runs):
    r0 = json.loads((runs / "rank0.json").read_text())
    r1 = json.loads((runs / "rank1.json").read_text())
    n = TRAIN["epochs"]
    assert r0["saves"][:3 * n] == [[lb, "seed-0", e] for lb in ("causal", "sasrec", "tiger") for e in range(1, n + 1)]
    assert r1["saves"] == []
    out = runs / "out-rank0"
    assert (out / "metrics.json").is_file() and (out / "metrics.md").is_file()
    doc = json.loads((out / "metrics.json").read_text())
    assert [r["label"] for r in doc["records"]] == ["causal", "sasrec", "tiger"]
    assert all(r["test"]["invalid_rate"] == 0.0 for r in doc["records"] if r["label"] != "sasrec")
    assert not (runs / "out-rank1").exists()          # rank 1 wrote no model and no metrics
    assert not (runs / "ckpt").exists()               # rank 0 removed the checkpoints when done


def test_every_rank_takes_rank_0s_validation_and_resume_is_exact(runs):
    r0 = json.loads((runs / "rank0.json").read_text())
    r1 = json.loads((runs / "rank1.json").read_text())
    assert r0["valid"] == r1["valid"] and all(v is not None for v in r0["valid"])
    assert r0["full"] == r1["full"]                   # the all-reduced epoch loss is the same everywhere
    # interrupted after epoch 2 and resumed: the same losses and weights, bit for bit,
    # with dropout on (every rank restores its own RNG state from rank 0's checkpoint)
    for r in (r0, r1):
        assert r["resumed"] == r["full"] and r["same_weights"]


def test_checkpoint_holds_every_ranks_rng_state(runs):
    from safetensors.torch import load_file

    # the interrupted run's checkpoint was resumed and finished; its last state is epoch 4
    state = json.loads((runs / "resume" / "state.json").read_text())
    assert state["epoch"] == 4 and state["world_size"] == WORLD
    tensors = load_file(str(runs / "resume" / "optim.safetensors"))
    assert {"rng.torch", "rng.rank0.torch", "rng.rank1.torch"} <= set(tensors)
    assert not torch.equal(tensors["rng.rank0.torch"], tensors["rng.rank1.torch"])   # own dropout streams


def test_rank_processes_of_sidkit_train_stage_once_and_agree_on_a_cached_stage(runs):
    r0 = json.loads((runs / "rank0.json").read_text())
    r1 = json.loads((runs / "rank1.json").read_text())
    assert r0["run_loops"] == r1["run_loops"] == [1, 0]      # trained once together, then cached
    doc = json.loads((runs / "run" / "recommender" / "metrics.json").read_text())
    assert [r["label"] for r in doc["records"]] == ["sasrec"] and doc["records"][0]["epochs_run"] == 2
    assert sorted(p.name for p in (runs / "run").iterdir()) == ["checkpoints", "data", "recommender", "split"]


def test_cli_nproc_2_trains_with_torchrun(tmp_path):
    """`sidkit train --nproc 2` launches torchrun; same curve as one process (dropout 0)."""
    from typer.testing import CliRunner

    from sidkit.cli import app

    cfg = _tiny_run_config(tmp_path)
    env = dict(os.environ, SIDKIT_NO_PROGRESS="1")
    r = subprocess.run(SIDKIT + ["train", str(cfg), "--out", str(tmp_path / "two"),
                        "--device", "cpu", "--nproc", "2", "--threads", "1"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| sasrec | 1 |" in r.stdout and r.stdout.count("# Recommendation metrics") == 1   # rank 0 printed
    assert not list((tmp_path / "two").glob(".recommender.*"))      # no stage folder left by another rank
    one = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "one"), "--device", "cpu"])
    assert one.exit_code == 0, one.output
    l1 = [h["loss"] for h in _history(tmp_path / "one" / "recommender", "sasrec")]
    l2 = [h["loss"] for h in _history(tmp_path / "two" / "recommender", "sasrec")]
    np.testing.assert_allclose(l2, l1, rtol=2e-5, atol=0)


def test_nproc_inside_torchrun_or_without_gpus_is_a_clear_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from sidkit.cli import app

    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\ndataset = "x"\n[model]\ntype = "sasrec"\n')
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    r = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "r"), "--nproc", "2"])
    assert r.exit_code == 1 and "torchrun started" in r.output and "drop --nproc" in r.output
    assert not (tmp_path / "r").exists()
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k)
    if not torch.cuda.is_available():   # more processes than GPUs: refused before any stage or launch
        r = CliRunner().invoke(app, ["train", str(cfg), "--out", str(tmp_path / "r"), "--nproc", "2",
                                     "--device", "cuda"])
        assert r.exit_code == 1 and "CUDA is not available" in r.output and "--device" in r.output
        assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("device, gpus, backend", [("cpu", 2, "gloo"), ("cuda", 2, "nccl"),
                                                   ("auto", 2, "nccl"), ("auto", 0, "gloo")])
def test_init_picks_nccl_and_the_local_gpu_on_cuda_gloo_on_cpu(monkeypatch, device, gpus, backend):
    """The backend choice, without a GPU on this machine: torch's CUDA queries and the
    process-group start are replaced; LOCAL_RANK 1 must become the current CUDA device."""
    import torch.distributed as dist

    from sidkit.training import distributed

    calls = {}
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed, "active", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("device", d))
    monkeypatch.setattr(dist, "init_process_group", lambda b, **kw: calls.setdefault("backend", b))
    distributed.init(device)
    assert calls["backend"] == backend
    assert calls.get("device") == (1 if backend == "nccl" else None)
    if backend == "nccl":  # local rank 1 with one GPU: a clear error, not a hang in NCCL
        from sidkit.errors import ConfigError

        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        with pytest.raises(ConfigError, match="local rank 1 has no GPU"):
            distributed.init(device)
