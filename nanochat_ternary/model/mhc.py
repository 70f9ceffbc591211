"""mHC: manifold-constrained hyper-connections (residual routing over n streams).

Hyper-connections (Zhu et al., 2024, https://arxiv.org/abs/2409.19606) widen the residual stream
into n copies. mHC (DeepSeek, 2025, https://arxiv.org/abs/2512.24880) constrains the
stream-mixing matrix H_res to the doubly stochastic matrices (the Birkhoff polytope), so the
product of all layers' H_res can neither amplify nor vanish the signal: every row and column sum
of a product of doubly stochastic matrices is exactly 1 ("composite gain" <= 1).

The paper projects with Sinkhorn iterations; here H_res is built *exactly* doubly stochastic as a
convex combination of the n! permutation matrices (Birkhoff–von Neumann):
  n = 2: one logit, H_res = [[a, 1-a], [1-a, a]], a = sigmoid(logit);
  n = 4: softmax over 24 logits, H_res = sum_k w_k P_k.
Per block, with streams X [n, B, T, D] (stream-major, so each stream is one contiguous slab and
both mixes are a single small matmul over the flattened streams) and the residual branch F:
  x_in = sum_i H_pre[i] X_i            (H_pre = softmax(pre_logits), a convex combination)
  X'_i = sum_j H_res[i, j] X_j + H_post[i] F(x_in)      (H_post = 2 sigmoid(post_logits))
Init is near identity: H_res puts 0.9 on the identity, and the mean of H_post over the streams is
1, so the mean stream (the model's readout) gets every block's output once, as in a plain residual
network. Equal streams are a symmetric point: if every block also read and wrote all streams
alike they would stay equal copies, H_res would act on n identical vectors, and its logits would
get no gradient. So both mixes start lopsided: block l reads mostly from stream l mod n (H_pre
weight ~0.88 for n = 2, as in hyper-connections' static init) and writes mostly into the stream
the next block reads, (l + 1) mod n (H_post = POST_MAIN there, the rest share n - POST_MAIN).
Each block then sees its predecessor's output at about 1.5x and older outputs at 0.6-1.3x, the
streams differ from block 0 on, and H_res learns from the first step. (Writing into the block's
own stream instead would show each block its predecessor at 0.54x.) `model.mhc_post_main = 1.0`
gives the symmetric write; README "Real Rust" measures the two.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn as nn

from ..config import ModelConfig

IDENTITY_WEIGHT = 0.9  # weight of the identity permutation in H_res at init
PRE_LOGIT = 2.0  # H_pre logit of the stream a block reads from at init
# H_post weight, at init, of the stream the next block reads (the others share n - POST_MAIN)
POST_MAIN = ModelConfig.mhc_post_main


def permutation_matrices(n: int) -> torch.Tensor:
    """All n! permutation matrices [n!, n, n]; index 0 is the identity."""
    perms = list(itertools.permutations(range(n)))
    mats = torch.zeros(len(perms), n, n)
    for k, p in enumerate(perms):
        mats[k, torch.arange(n), torch.tensor(p)] = 1.0
    return mats


def res_weights(res_logits: torch.Tensor, n: int) -> torch.Tensor:
    """Convex weights over the n! permutations (n = 2 uses a single logit)."""
    if n == 2:
        a = torch.sigmoid(res_logits)
        return torch.cat([a, 1 - a])
    return torch.softmax(res_logits, dim=0)


def res_matrix(res_logits: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """H_res [n, n] from the logits and the permutation matrices."""
    n = perms.shape[-1]
    return torch.einsum("k,kij->ij", res_weights(res_logits, n), perms)


class MHC(nn.Module):
    """The routing parameters of one block for n in {2, 4} streams (n = 1 needs none)."""

    def __init__(self, n: int, layer_idx: int = 0, post_main: float = POST_MAIN):
        super().__init__()
        self.layer_idx = layer_idx
        self.post_main = post_main
        if n not in (2, 4):
            raise ValueError(f"mHC supports 2 or 4 streams here (n = 1 is the plain residual), got {n}")
        self.n = n
        self.register_buffer("perms", permutation_matrices(n), persistent=False)
        n_perm = math.factorial(n)
        ident = math.log(IDENTITY_WEIGHT * (n_perm - 1) / (1 - IDENTITY_WEIGHT))
        res = torch.zeros(1 if n == 2 else n_perm)
        res[0] = ident
        self.res_logits = nn.Parameter(res)
        pre = torch.zeros(n)
        pre[layer_idx % n] = PRE_LOGIT
        self.pre_logits = nn.Parameter(pre)
        # H_post = 2 sigmoid(logit): logit(h / 2) gives weight h; the weights' mean over streams is 1
        rest = (n - post_main) / (n - 1)
        post = torch.full((n,), math.log(rest / (2 - rest)))
        post[(layer_idx + 1) % n] = math.log(post_main / (2 - post_main))
        self.post_logits = nn.Parameter(post)

    def h_res(self) -> torch.Tensor:
        return res_matrix(self.res_logits, self.perms)

    def h_pre(self) -> torch.Tensor:
        return torch.softmax(self.pre_logits, dim=0)

    def h_post(self) -> torch.Tensor:
        return 2 * torch.sigmoid(self.post_logits)

    def read(self, streams: torch.Tensor) -> torch.Tensor:
        """[n, B, T, D] -> the block input [B, T, D]."""
        n = self.n
        return (self.h_pre().to(streams.dtype) @ streams.reshape(n, -1)).view(streams.shape[1:])

    def write(self, streams: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Mix the streams with H_res and add the block output with weights H_post."""
        n = self.n
        mixed = (self.h_res().to(streams.dtype) @ streams.reshape(n, -1)).view(streams.shape)
        return torch.addcmul(mixed, self.h_post().to(out.dtype).view(n, 1, 1, 1), out.unsqueeze(0))


def composite_gain(h_res_list: list[torch.Tensor]) -> float:
    """Largest absolute row or column sum of the product of all H_res (1.0 for n = 1)."""
    if not h_res_list:
        return 1.0
    prod = h_res_list[0].detach().double()
    for h in h_res_list[1:]:
        prod = h.detach().double() @ prod
    a = prod.abs()
    return float(max(a.sum(0).max(), a.sum(1).max()))
