"""One way for the eval commands to score and sample a model given as a checkpoint or a GGUF.

Why this module exists: `eval bpb`, `eval compile` and `eval humaneval-rs` take `--model` as a
training checkpoint (a run folder, `checkpoints/best`, a step folder) or an exported GGUF, and
must measure what the user gives them. Scoring a GGUF goes through the inference Engine (the
exported, quantised model is what is measured); a checkpoint is scored by the training model
itself. Sampling always uses the Engine's KV cache and batched decode (many samples per prompt
in one forward per token): a checkpoint is exported to a temporary GGUF first, which for a
ternary model is exact (its forward already uses the ternary weights).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.tokenizer import Tokenizer
from ..errors import FormatError
from ..infer.sampling import Sampler, SamplingParams, sample_batch


class EvalModel:
    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise FormatError(f"{self.path}: no such model (give a checkpoint folder or a .gguf file)")
        self.is_gguf = self.path.is_file() and self.path.suffix == ".gguf"
        self._engine = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        if threads:
            torch.set_num_threads(threads)
        if self.is_gguf:
            self._load_engine(self.path)
            self.tokenizer: Tokenizer = self._engine.tokenizer
            self.n_ctx = self._engine.n_ctx
            self.data_dir = None
        else:
            from ..train.checkpoint import load_checkpoint
            from ..train.sample import load_model

            self.model, self.tokenizer, self.step_dir = load_model(self.path)
            self.n_ctx = self.model.cfg.max_seq_len
            data_dir = load_checkpoint(self.step_dir).meta.get("data_dir")
            self.data_dir = Path(data_dir) if data_dir else None  # the dataset it was trained on

    def _load_engine(self, gguf: Path) -> None:
        from ..infer.engine import Engine

        self._engine = Engine.load(gguf)

    def engine(self):
        """The inference Engine (a checkpoint is exported to a temporary GGUF on first use)."""
        if self._engine is None:
            from ..export.gguf_export import export_checkpoint

            self._tmp = tempfile.TemporaryDirectory(prefix="nanochat_eval_")
            out = Path(self._tmp.name) / "model.gguf"
            export_checkpoint(self.step_dir, out)
            self._load_engine(out)
        return self._engine

    @torch.no_grad()
    def logits(self, ids: list[int]) -> torch.Tensor:
        """float32 [len(ids), vocab] next-token logits of a full forward from an empty context."""
        if self.is_gguf:
            return self._engine.forward_logits(ids)
        return self.model(torch.tensor([ids]))[0].float()

    def generate(self, prompt: list[int], n: int, max_new: int, params: SamplingParams,
                 stop: Callable[[list[int]], bool]) -> list[list[int]]:
        """n samples continuing `prompt` (seeds params.seed + i), each until eos, `stop(tokens)`
        or max_new tokens; returns the generated ids of each."""
        eng = self.engine()
        max_new = max(0, min(max_new, eng.n_ctx - len(prompt)))
        stops = {self.tokenizer.eos_id, self.tokenizer.im_end_id}
        states = [eng.new_state() for _ in range(n)]
        samplers = [Sampler(SamplingParams(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                                           seed=(params.seed or 0) + i)) for i in range(n)]
        outs: list[list[int]] = [[] for _ in range(n)]
        try:
            first = eng.prefill(states[0], prompt)
            for s in states[1:]:
                eng.prefill(s, prompt)
            logits = first.unsqueeze(0).expand(n, -1)
            active = list(range(n))
            for _ in range(max_new):
                toks = sample_batch([samplers[i] for i in active], logits, [prompt + outs[i] for i in active])
                still = []
                for i, t in zip(active, toks):
                    if t in stops:
                        continue
                    outs[i].append(t)
                    if not stop(outs[i]) and len(outs[i]) < max_new:
                        still.append((i, t))
                if not still:
                    break
                active = [i for i, _ in still]
                logits = eng.decode([states[i] for i in active], [t for _, t in still])
        finally:
            for s in states:
                s.release()
        return outs

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
