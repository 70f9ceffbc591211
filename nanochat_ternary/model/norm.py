"""RMSNorm (Zhang & Sennrich, 2019, https://arxiv.org/abs/1910.07467) for every norm in the model.

nn.RMSNorm with the same parameter (`weight`) and the same maths; on a CPU in float32 its forward
and backward are one native call each (native_ops.py) instead of nn.RMSNorm's op chain.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import native_ops


class RMSNorm(nn.RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.normalized_shape) == 1 and native_ops.usable(x, self.weight):
            eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
            return native_ops.rms_norm(x, self.weight, eps)
        return super().forward(x)
