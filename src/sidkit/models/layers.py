"""Small torch layers shared by the recommenders' modules (built lazily: importing sidkit
does not import torch)."""

from __future__ import annotations

_DROPOUT = None


def dropout(p: float):
    """A dropout layer (an ``nn.Module``, no parameters, so state dicts are those of
    ``nn.Dropout``) that is about 2.5x cheaper on a CPU.

    ``torch``'s CPU dropout draws its mask with ``bernoulli_``, which on the 2-core
    reference machine took longer than the layer's matmuls (about 13 ns per element);
    here the mask is ``rand >= p`` scaled by ``1 / (1 - p)`` -- the same distribution (each
    element kept with probability ``1 - p``, up to float32's 2^-24 steps), from a uniform
    draw that is several times faster.  The multiplication by the mask is an ordinary
    autograd op, so backward multiplies by the same mask.  On other devices, at ``p = 0``
    and in eval mode it is ``nn.functional.dropout``."""
    global _DROPOUT
    if _DROPOUT is None:
        import torch
        import torch.nn.functional as F
        from torch import nn

        class Dropout(nn.Module):
            def __init__(self, p: float):
                super().__init__()
                self.p = float(p)

            def forward(self, x):
                if not self.training or self.p == 0.0:
                    return x
                if x.device.type != "cpu":
                    return F.dropout(x, self.p, True)
                mask = torch.rand(x.shape, dtype=torch.float32, device=x.device).ge_(self.p)
                return x * mask.mul_(1.0 / (1.0 - self.p)).to(x.dtype)

            def extra_repr(self) -> str:
                return f"p={self.p}"

        _DROPOUT = Dropout
    return _DROPOUT(p)
