"""The native trunk (native/csrc/nc_trunk.c: every layer in one call) against the op-by-op trunk."""

from __future__ import annotations

import pytest
import torch

from infer_helpers import export_snapped, one_thread  # noqa: F401 (fixture)
from nanochat_ternary.infer.engine import Engine

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(engine: Engine, native: bool, prompts: list[list[int]], steps: int) -> list[torch.Tensor]:
    """Prefill every prompt, then `steps` batched decode steps, and one prefill + speculative-style
    verify of several rows: every logits row, in order."""
    plan = engine.net.plan
    engine.net.plan = plan if native else None
    try:
        out = []
        states = [engine.new_state() for _ in prompts]
        out += [engine.prefill(s, p) for s, p in zip(states, prompts)]
        for i in range(steps):
            out.append(engine.decode(states, [(7 * i + j) % 300 + 3 for j in range(len(states))]))
        logits, z = engine.verify_batch(states[:2], [[5, 6, 7], [8]])
        out += [logits, z]
        return out
    finally:
        engine.net.plan = plan


@pytest.mark.parametrize("variant", [{}, {"group_size": 256}, {"use_mtp": True, "mtp_n_tokens": 2}, {"mhc_n_streams": 2}, {"mhc_n_streams": 4}])
def test_native_trunk_gives_the_op_by_op_bits(tmp_path, variant):
    """Same kernels in the same order: identical logits, for prefill, batched decode (rows of
    different lengths) and multi-row verify, across KV-cache growth (more slots than the pool's
    first 4, positions past its first 64), which moves the caches the trunk writes into."""
    g, m, _, tok = export_snapped(tmp_path, **variant)
    engine = Engine.load(g, m)
    if engine.backend == "torch":
        pytest.skip("no native kernels (no C compiler)")
    assert engine.net.plan is not None
    prompts = [tok.encode("fn main() {\n    let x = 1;\n" * (k + 1))[: 20 + 13 * k] for k in range(6)]
    native = _run(engine, True, prompts, 40)
    reference = _run(engine, False, prompts, 40)
    assert engine.pool.slots > 4 and engine.pool.capacity > 64  # the caches grew (and moved) on the way
    for a, b in zip(native, reference):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variant", [{"use_bitlinear": False}, {"use_bitlinear": False, "mhc_n_streams": 2}])
def test_models_the_native_trunk_cannot_run_go_op_by_op(tmp_path, variant):
    """Dense projections are not in nc_trunk: no plan, and the engine still decodes."""
    g, m, _, tok = export_snapped(tmp_path, **variant)
    engine = Engine.load(g, m)
    assert engine.net.plan is None
    s = engine.new_state()
    engine.prefill(s, tok.encode("fn main() {"))
    assert torch.isfinite(engine.decode([s], [5])).all()
