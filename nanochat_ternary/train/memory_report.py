"""The training-memory part of `nanochat params`: memory_estimate.py's figures as text lines.

Kept apart from the estimate so that the estimate stays a pure function of the config (used by
`nanochat bench train` beside its measured peaks) and the wording lives in one place.
"""

from __future__ import annotations

from .memory_estimate import GIB


def _gib(n: int) -> str:
    return f"{n / GIB:8.2f} GiB"


def memory_lines(est: dict) -> list[str]:
    """Lines for the terminal: the expected peak, its terms, its phases, the alternatives, the budget."""
    b, alt = est["bytes"], est["alternatives"]
    opt = "8-bit" if est["use_8bit_optim"] else "fp32"
    ckpt = "on" if est["gradient_checkpointing"] else "off"
    accum = f"accumulating {est['batch_size'] // est['micro_batch_size']} micro-batches" if est["accumulating"] else "no accumulation"
    lines = [f"  training memory on one GPU (estimate; {est['dtype']}, micro-batch {est['micro_batch_size']} x {est['seq_length']} tokens"
             f" of global batch {est['batch_size']}, {accum}, checkpointing {ckpt}, {opt} optimizer states):"]
    labels = {"weights": "weights (fp32)", "gradients": "gradients (fp32)", "optimizer_states": f"optimizer states ({opt})",
              "activations": f"activations (ckpt {ckpt})", "loss": "loss (full logits)" if est["full_logits"] else "loss (chunked)",
              "backward": "one block's backward", "optimizer_step": "optimizer step copies"}
    for key, label in labels.items():
        lines.append(f"    {label:<26}{_gib(b[key])}")
    lines.append("    peak = weights + optimizer states + the largest phase:")
    for name, value in est["phases"].items():
        mark = "  <- peak" if name == est["peak_phase"] else ""
        lines.append(f"      {name + ' phase':<24}{_gib(value)}{mark}")
    lines.append(f"    {'peak':<26}{_gib(b['peak'])}")
    lines.append(f"    {'activations, ckpt off':<26}{_gib(alt['activations_without_checkpointing'])}")
    lines.append(f"    {'activations, ckpt on':<26}{_gib(alt['activations_with_checkpointing'])}")
    lines.append(f"    {'optimizer states fp32':<26}{_gib(alt['optimizer_states_fp32'])}")
    lines.append(f"    {'optimizer states 8-bit':<26}{_gib(alt['optimizer_states_8bit'])}"
                 f"  ({alt['optimizer_states_8bit'] / alt['optimizer_states_adamw_fp32']:.3f}x fp32 AdamW"
                 f" {alt['optimizer_states_adamw_fp32'] / GIB:.2f} GiB)")
    if "budget_gb" in est:
        verdict = "fits" if est["fits_budget"] else "DOES NOT fit"
        lines.append(f"    user's budget {est['budget_gb']} GB: {verdict} ({b['peak'] / 1e9:.2f} GB peak;"
                     " add ~0.5 GB for the CUDA context)")
    return lines
