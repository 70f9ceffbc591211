"""Gated DeltaNet: a linear-attention token mixer with a gated delta-rule state, and its placement.

Yang, Kautz, Hatamizadeh, "Gated Delta Networks: Improving Mamba2 with Delta Rule" (2024),
https://arxiv.org/abs/2412.06464. Per head, a state S [d_k, d_v] is decayed and then corrected
towards the new key/value pair (the delta rule, Widrow-Hoff):

    S_t = a_t S_{t-1} + k_t nu_t^T,   nu_t = beta_t (v_t - a_t S_{t-1}^T k_t),   o_t = S_t^T q_t

with a_t = exp(g_t), g_t = -exp(A_log) * softplus(a-proj(x_t) + dt_bias) <= 0 and
beta_t = sigmoid(b-proj(x_t)). q, k, v pass a causal depthwise conv (kernel 4) and SiLU; q and k
are L2-normalised, q scaled by 1/sqrt(d_k). The read-out gets a per-head RMSNorm, times
SiLU(g-proj(x)), then o_proj.

Three forms of the same recurrence, checked against each other in tests/test_model_deltanet.py:
- `chunk_gated_delta_rule`: the chunkwise WY/UT form used for training and prefill (plain
  PyTorch, runs on CPU). Within a chunk of C tokens with cumulative log-decay G (G_i <= 0),
  (I + A) N = beta V - (beta exp(G) K) S0 with A_ij = beta_i k_i.k_j exp(G_i - G_j) (i > j) is
  solved by one unit-lower-triangular solve (the UT transform of the WY representation,
  arXiv 2406.06484 section 3); then O = (Q exp(G)) S0 + (Q K^T * L) N and
  S1 = exp(G_C) S0 + (K exp(G_C - G))^T N. exp is only taken of G itself (<= 0) and of masked
  differences G_i - G_j with i >= j (<= 0), so a strong decay underflows to 0, never overflows.
- `gated_delta_step`: one token for every row of a batch (decoding).
- `naive_gated_delta_rule`: a per-token loop of the step (tests only).

Choices: DeltaNet layers use `num_heads` heads with d_k = d_v = head_dim, so q, k, v, the gate
g and o_proj are D x D BitLinears (every input a multiple of 256 when hidden_dim is). The decay
and write-strength projections a and b ([num_heads, D]) stay full precision: they are 0.2% of
the layer's weights and a ternary decay would be too coarse to learn the time scales. Where CUDA
and the `fla` package are present, fla's Triton chunk kernel replaces the PyTorch one.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bitlinear import make_linear, shared_input_linear
from .norm import RMSNorm

CHUNK = 64
CONV_KERNEL = 4


def deltanet_layers(num_layers: int, ratio: float) -> list[int]:
    """Indices of the Gated DeltaNet layers: round(ratio * layers), spread evenly over the first
    num_layers - 1 layers (the last layer is always full attention)."""
    n = min(int(round(ratio * num_layers)), num_layers - 1)
    if n <= 0:
        return []
    span = num_layers - 1
    return [int((i + 0.5) * span / n) for i in range(n)]


# ---- the recurrence in its three forms ------------------------------------------------------
def gated_delta_step(q, k, v, g, beta, state):
    """One token per row: q, k [N, H, dk], v [N, H, dv], g, beta [N, H], state [N, H, dk, dv]
    -> (o [N, H, dv], new state). The state is updated in place (decoding owns it)."""
    state.mul_(g.exp()[..., None, None])
    memory = (k.unsqueeze(-2) @ state).squeeze(-2)  # S^T k, [N, H, dv]
    delta = (v - memory) * beta[..., None]
    state.add_(k.unsqueeze(-1) * delta.unsqueeze(-2))
    return (q.unsqueeze(-2) @ state).squeeze(-2), state


def naive_gated_delta_rule(q, k, v, g, beta, initial_state=None):
    """Reference loop (tests only), written in the paper's product form, per token:
    S_t = a_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t.
    q, k [B, H, T, dk], v [B, H, T, dv], g, beta [B, H, T]."""
    B, H, T, dk = k.shape
    S = initial_state if initial_state is not None else k.new_zeros(B, H, dk, v.shape[-1])
    eye = torch.eye(dk, dtype=k.dtype)
    outs = []
    for t in range(T):
        kt, bt = k[:, :, t, :, None], beta[:, :, t, None, None]  # [B, H, dk, 1], [B, H, 1, 1]
        transition = g[:, :, t, None, None].exp() * (eye - bt * kt @ kt.transpose(-1, -2))
        S = transition @ S + bt * kt @ v[:, :, t, None, :]
        outs.append((S.transpose(-1, -2) @ q[:, :, t, :, None])[..., 0])
    return torch.stack(outs, dim=2), S


def chunk_gated_delta_rule(q, k, v, g, beta, initial_state=None, chunk_size: int = CHUNK):
    """Chunkwise form (module docstring); same shapes as the naive loop. Returns (o, final state).

    T need not be a multiple of the chunk: q, k, v, beta and g are padded with zeros, and a
    padded token (k = 0, beta = 0, g = 0) neither writes to nor decays the state."""
    B, H, T, dk = k.shape
    dv = v.shape[-1]
    dtype = v.dtype
    if T == 0:
        state = initial_state.float() if initial_state is not None else k.new_zeros(B, H, dk, dv, dtype=torch.float32)
        return v.new_zeros(B, H, 0, dv), state
    q, k, v, g, beta = (x.float() for x in (q, k, v, g, beta))
    C = chunk_size
    pad = (-T) % C
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = F.pad(g, (0, pad)), F.pad(beta, (0, pad))
    n = (T + pad) // C
    q, k, v = (x.reshape(B, H, n, C, x.shape[-1]) for x in (q, k, v))
    G = g.reshape(B, H, n, C).cumsum(-1)
    beta = beta.reshape(B, H, n, C)
    incl = torch.ones(C, C, dtype=torch.bool, device=k.device).tril()
    decay = torch.where(incl, G[..., :, None] - G[..., None, :], -math.inf).exp()  # L_ij, 0 above
    kb = k * beta[..., None]
    A = (kb @ k.transpose(-1, -2) * decay).tril(-1)
    eye = torch.eye(C, device=k.device)
    rhs = torch.cat([v * beta[..., None], kb * G.exp()[..., None]], dim=-1)
    uw = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
    u, w = uw[..., :dv], uw[..., dv:]
    qk = q @ k.transpose(-1, -2) * decay
    qg = q * G.exp()[..., None]
    kd = k * (G[..., -1:] - G).exp()[..., None]
    last = G[..., -1].exp()[..., None, None]
    S = initial_state.float() if initial_state is not None else k.new_zeros(B, H, dk, dv)
    outs = []
    for c in range(n):
        nu = u[:, :, c] - w[:, :, c] @ S
        outs.append(qg[:, :, c] @ S + qk[:, :, c] @ nu)
        S = S * last[:, :, c] + kd[:, :, c].transpose(-1, -2) @ nu
    o = torch.stack(outs, dim=2).reshape(B, H, n * C, dv)[:, :, :T]
    return o.to(dtype), S


def _fla_kernel():
    """fla's Triton chunk kernel when CUDA and the package are present, else None."""
    if not torch.cuda.is_available():
        return None
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
    except Exception:  # not installed, or a build that does not import
        return None
    return fla_chunk


def causal_conv(x: torch.Tensor, weight: torch.Tensor, tail: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise causal conv + SiLU: x [B, T, C], weight [C, 1, K], tail [B, K-1, C] (the inputs
    before x; zeros when None). Returns [B, T, C]."""
    K = weight.shape[-1]
    xt = x.transpose(1, 2)
    xt = torch.cat([tail.transpose(1, 2), xt], dim=-1) if tail is not None else F.pad(xt, (K - 1, 0))
    return F.silu(F.conv1d(xt, weight, groups=weight.shape[0])).transpose(1, 2)


def causal_conv_step(window: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One decode step of `causal_conv`: window [N, K, C] (the K - 1 tail inputs, then the new
    one), weight [C, 1, K] -> [N, C]. A multiply-and-sum: for one output position, conv1d's
    per-call setup (oneDNN) costs ~10x the arithmetic. Made row-major: einsum hands back a
    column-major [N, C] when N > 1, and the per-row reductions that follow (the q / k norms) then
    add in another order than for one row, so a sequence's decode would depend on its batch."""
    return F.silu(torch.einsum("nkc,ck->nc", window, weight[:, 0, :]).contiguous())


def decay_and_beta(a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor):
    """Log-decay g = -exp(A_log) softplus(a + dt_bias) (<= 0) and beta = sigmoid(b)."""
    g = -A_log.float().exp() * F.softplus(a.float() + dt_bias.float())
    return g, torch.sigmoid(b.float())


def qkv_heads(x: torch.Tensor, n_heads: int, dk: int, dv: int):
    """Split conv outputs [..., 2 H dk + H dv] into L2-normalised q (scaled 1/sqrt(dk)), k, v."""
    q, k, v = x.split([n_heads * dk, n_heads * dk, n_heads * dv], dim=-1)
    q = F.normalize(q.unflatten(-1, (n_heads, dk)).float(), dim=-1, eps=1e-6) * dk**-0.5
    k = F.normalize(k.unflatten(-1, (n_heads, dk)).float(), dim=-1, eps=1e-6)
    return q, k, v.unflatten(-1, (n_heads, dv)).float()


# ---- the layer ------------------------------------------------------------------------------
class GatedDeltaNet(nn.Module):
    """Drop-in for Attention in a Block: forward(x [B, T, D], cos, sin) -> [B, T, D]."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg.hidden_dim
        self.n_head, self.dk, self.dv = cfg.num_heads, cfg.head_dim, cfg.head_dim
        H, dk, dv = self.n_head, self.dk, self.dv
        self.q_proj = make_linear(d, H * dk, cfg)
        self.k_proj = make_linear(d, H * dk, cfg)
        self.v_proj = make_linear(d, H * dv, cfg)
        self.g_proj = make_linear(d, H * dv, cfg)  # output gate
        self.a_proj = nn.Linear(d, H, bias=False)  # decay input (full precision, see docstring)
        self.b_proj = nn.Linear(d, H, bias=False)  # write strength
        channels = 2 * H * dk + H * dv
        self.conv = nn.Conv1d(channels, channels, CONV_KERNEL, groups=channels, bias=False)
        self.A_log = nn.Parameter(torch.empty(H))
        self.dt_bias = nn.Parameter(torch.empty(H))
        self.A_log._no_weight_decay = True
        self.dt_bias._no_weight_decay = True
        self.o_norm = RMSNorm(dv, eps=cfg.norm_eps)
        self.o_proj = make_linear(H * dv, d, cfg)
        self.reset_gates()

    @torch.no_grad()
    def reset_gates(self, gen: torch.Generator | None = None) -> None:
        """fla's init: A ~ U(0, 16), dt log-uniform in [1e-3, 0.1], dt_bias = softplus^-1(dt)."""
        H = self.n_head
        self.A_log.copy_(torch.empty(H).uniform_(0, 16, generator=gen).clamp_min(1e-4).log())
        dt = torch.exp(torch.rand(H, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp_min(1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        w = self.conv.weight
        w.copy_(torch.empty_like(w).uniform_(-1, 1, generator=gen) / math.sqrt(CONV_KERNEL))

    def forward(self, x: torch.Tensor, cos=None, sin=None) -> torch.Tensor:
        B, T, _ = x.shape
        H, dk, dv = self.n_head, self.dk, self.dv
        mixed = causal_conv(shared_input_linear(x, [self.q_proj, self.k_proj, self.v_proj]), self.conv.weight)
        q, k, v = (t.transpose(1, 2) for t in qkv_heads(mixed, H, dk, dv))  # [B, H, T, d]
        g, beta = (t.transpose(1, 2) for t in decay_and_beta(self.a_proj(x), self.b_proj(x), self.A_log, self.dt_bias))
        fla = _fla_kernel() if x.is_cuda else None
        if fla is not None:  # [B, T, H, d] layout; q is already normalised and scaled
            o, _ = fla(*(t.transpose(1, 2).contiguous() for t in (q, k, v, g, beta)), scale=1.0)
            o = o.transpose(1, 2)
        else:
            o, _ = chunk_gated_delta_rule(q, k, v, g, beta)
        o = self.o_norm(o.transpose(1, 2).to(x.dtype)) * F.silu(self.g_proj(x).view(B, T, H, dv))
        return self.o_proj(o.reshape(B, T, H * dv))
