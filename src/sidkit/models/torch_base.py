"""The base of the torch recommenders (SASRec, the causal SID model, TIGER): one
``torch.nn.Module`` per model, trained by :func:`sidkit.training.train_loop`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import ArtifactError
from ..training import loop
from ..training.loop import train_cfg
from .base import Recommender


class TorchRecommender(Recommender):
    """A recommender whose state is one ``torch.nn.Module`` (``module_``).

    Subclasses implement ``build_module(n_items)``, ``train_arrays(data)`` (numpy
    arrays with one row per training sample), ``train_loss(module, *batch)`` and
    ``score_tensor(module, history) -> (B, N)``.  :meth:`fit` runs :func:`train_loop`.
    """

    def _check_transformer_params(self, int_names: tuple[str, ...], example: str) -> None:
        """The shared checks of a transformer's size parameters: positive integers,
        ``hidden`` divisible by ``n_heads``, ``dropout`` in [0, 1)."""
        from ..errors import ConfigError

        if self.hidden % self.n_heads:
            raise ConfigError(f"hidden={self.hidden} is not divisible by n_heads={self.n_heads}",
                              f"pick n_heads dividing hidden, e.g. {example}")
        for nm in int_names:
            v = getattr(self, nm)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"{nm} must be an integer >= 1, got {v!r}", f"set {nm} to a positive integer")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout}", "use e.g. 0.2")

    # ------------------------------------------------------------ padding
    #: Run the transformer on length groups trimmed to their real part (see
    #: :meth:`length_groups`); ``False`` runs every batch at its full padded width (the
    #: reference of ``tests/test_packing.py`` and the "before" path of
    #: ``benchmarks/train.py --data beauty``).
    trim_padding: bool = True
    #: The cost model of :meth:`length_groups` on a CPU: the fixed cost of one more group
    #: pass, in row-columns, and the attention's share per column (fitted on the 2-core
    #: CPU, one torch thread: a pass costs ~2.5 ms, a SASRec row-column ~20 us forward +
    #: backward, a causal-SID token ~35 us).  On an accelerator a batch is only trimmed to
    #: its widest row (one group: kernels are cheap, launches are not).
    group_overhead: float = 200.0
    group_quadratic: float = 0.004

    def length_groups(self, tokens, *also, overhead: float | None = None) -> list[tuple[Any, int]]:
        """How to run a (B, L) batch of left-padded ``tokens`` without its padding:
        ``[(rows, width), ...]``, every row once: run rows ``rows`` on their last ``width``
        columns (``rows``: a long tensor on the batch's device for a torch batch, an int64
        array for a numpy one; ``None``: every row, in order).  A row's real part starts at
        its first non-pad (non-zero) token of ``tokens`` or of any array of ``also`` (e.g.
        the targets, or a boolean mask of the loss positions).  The groups come from
        :func:`sidkit.eval.sequences.length_groups` with this model's cost model
        (``overhead``: the fixed cost of a group, in place of ``group_overhead``); with
        ``trim_padding`` off, one group of every row at full width."""
        import torch

        from ..eval.sequences import length_groups, real_spans

        B, L = tokens.shape
        if not self.trim_padding or B == 0:
            return [(None, L)]
        spans = real_spans(tokens)
        for a in also:
            spans = np.maximum(spans, real_spans(a[:, -L:]))
        is_torch = isinstance(tokens, torch.Tensor)
        if overhead is None:
            overhead = self.group_overhead
        device = tokens.device if is_torch else getattr(self, "device_", None)
        if device is not None and torch.device(device).type != "cpu":
            overhead = float("inf")
        groups = length_groups(spans, overhead=overhead, quadratic=self.group_quadratic, max_width=L)
        if len(groups) == 1:
            return [(None, groups[0][1])]
        if not is_torch:
            return groups
        return [(torch.as_tensor(rows, device=tokens.device), w) for rows, w in groups]

    def epoch_indices(self, n: int, generator, epoch: int = 0):
        """The sample rows of epoch ``epoch`` (0-based) in training order: by default all
        ``n`` rows, shuffled with ``generator`` (the checkpointed shuffle generator).  A
        model may train on a subset per epoch (TIGER: a few targets per user)."""
        import torch

        return torch.randperm(n, generator=generator)

    def train_loss_terms(self, *batch):
        """How many terms the mean of ``train_loss(module, *batch)`` averages (by default
        the batch's rows; a model averaging over target tokens counts those).  Data-parallel
        training weights each rank's share of a batch by it (:func:`train_loop`)."""
        return len(batch[0])

    def _fingerprint_extra(self) -> dict[str, Any]:
        """Whatever else a checkpoint depends on (e.g. a SID model's codes): a resume with
        different values is refused like one with different parameters."""
        return {}

    def fit(self, data, *, train=None, seed: int = 0, device: str | None = "auto",
            checkpoint_dir: str | Path | None = None, callbacks: Iterable[Callable] = (),
            progress: bool | None = None) -> "TorchRecommender":
        from ..utils import resolve_device

        cfg = train_cfg(train)
        self.device_ = resolve_device(device)
        self._set_catalogue(data)
        self.train_config_ = cfg.model_dump()
        self.seed_ = int(seed)
        self.history_ = loop.train_loop(self, data, cfg, seed=seed, checkpoint_dir=checkpoint_dir,
                                   callbacks=callbacks, progress=progress)
        return self

    # -------------------------------------------------------------- inference
    def scores(self, history):
        import torch

        self._check_fitted()
        h = torch.as_tensor(self._check_history(history), device=self.device_)
        was = self.module_.training
        self.module_.eval()
        with torch.no_grad():
            s = self.score_tensor(self.module_, h).float()
        self.module_.train(was)
        return s

    # -------------------------------------------------------------- save / load
    def _state(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in self.module_.state_dict().items()}

    def _set_state(self, state) -> None:
        import torch

        from ..utils import resolve_device

        self._check_module_state(state)
        self.device_ = resolve_device("auto")
        module = self.build_module(self.n_items)
        try:
            module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
        except RuntimeError as e:
            raise ArtifactError(f"the saved weights do not fit the model parameters: {str(e)[:300]}",
                                "the weights belong to another config; retrain") from None
        self.module_ = module.to(self.device_).eval()

    def _check_module_state(self, state: dict) -> None:
        pass

    def _extra(self) -> dict[str, Any]:
        return {"history": getattr(self, "history_", []), "seed": getattr(self, "seed_", None),
                "train": getattr(self, "train_config_", None),
                "best_epoch": getattr(self, "best_epoch_", None), "best_valid": getattr(self, "best_valid_", None)}

    def _set_extra(self, extra: dict[str, Any]) -> None:
        self.history_ = extra.get("history", [])
        self.seed_ = extra.get("seed")
        self.train_config_ = extra.get("train")
        self.best_epoch_ = extra.get("best_epoch")
        self.best_valid_ = extra.get("best_valid")

    def to(self, device) -> "TorchRecommender":
        from ..utils import resolve_device

        self.device_ = resolve_device(device)
        self.module_.to(self.device_)
        return self
