"""llama.cpp interop: our `bitnet` GGUF must run in llama.cpp and agree with the PyTorch model.

Skipped when llama-cpp-python is not installed (it is an optional, source-built dependency).
Differences that remain by design: llama.cpp quantizes activations to int8 per block of 256
(Q8_K) where we use one absmax scale per token, and it rounds the embedding, the KV cache and
the LM-head input to F16. Float differences then flip a few int8 roundings of the activations;
in a random-init model (flat logits, std ~0.3) that leaves ~3% of positions with a different
argmax, in a briefly trained one none. A dense (F16) export agrees to float rounding.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import make_tiny_model

from nanochat_ternary.data.synthetic import generate_programs
from nanochat_ternary.export.gguf_export import export_model

llama_cpp = pytest.importorskip("llama_cpp")

PROMPTS = [
    "fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n",
    "pub struct Point {\n    x: f64,\n    y: f64,\n}\n\nimpl Point {\n    fn norm(&self) -> f64 {\n",
    "let total: u64 = values.iter().filter(|v| **v > 3).map(|v| v * 2).sum();\n",
    "#[cfg(test)]\nmod tests {\n    use super::*;\n\n    #[test]\n    fn test_count() {\n        assert_eq!(count(&[1, 2, 3]), 3);\n",
]
TOKENIZER_CHECKS = PROMPTS + [
    "    \n\n\t\t  trailing   \n", "numbers 1234567 0xFF_u8 1e-9 3.14159", "it's don't WE'LL 's",
    "// ünïcödé 日本語 🦀\nlet s = \"héllo\";", "<|im_start|>user\nhi<|im_end|>\n",
]


def briefly_train(model, tok, steps: int = 40, seq: int = 64, batch: int = 8):
    """A few AdamW steps on synthetic programs, so the logits are peaked like a real model's."""
    ids = []
    for text in generate_programs(400, seed=1):
        ids += [tok.eos_id] + tok.encode(text)
    data = torch.tensor(ids)
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq - 1, (batch,), generator=gen)
        x = torch.stack([data[s: s + seq] for s in starts])
        y = torch.stack([data[s + 1: s + seq + 1] for s in starts])
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), float(loss.detach())


def llama_logits(llm, ids: list[int]) -> np.ndarray:
    """Logits [T, V] from llama.cpp, feeding the prompt one token at a time (KV cache path)."""
    llm.reset()
    for t in ids:
        llm.eval([t])
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def compare(model, tok, path) -> tuple[float, float]:
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_threads=2, vocab_only=False,
                          n_ctx=256, n_batch=64, verbose=False)
    agree, ours_all, theirs_all = [], [], []
    try:
        with torch.no_grad():
            for text in PROMPTS:
                ids = [tok.bos_id] + tok.encode(text)
                ours = model(torch.tensor([ids]))[0].numpy()
                theirs = llama_logits(llm, ids)
                assert theirs.shape == ours.shape
                agree += list(ours.argmax(-1) == theirs.argmax(-1))
                ours_all.append(ours.ravel())
                theirs_all.append(theirs.ravel())
    finally:
        llm.close()  # free llama.cpp's threads and memory before torch runs again
    corr = float(np.corrcoef(np.concatenate(ours_all), np.concatenate(theirs_all))[0, 1])
    return float(np.mean(agree)), corr


@pytest.fixture(scope="module")
def random_model_gguf(tmp_path_factory):
    torch.set_flush_denormal(True)
    model, tok = make_tiny_model()
    path = tmp_path_factory.mktemp("llama") / "random.gguf"
    export_model(model, tok, path, None)
    return model, tok, path


def test_llama_cpp_matches_random_model(random_model_gguf):
    model, tok, path = random_model_gguf
    agreement, corr = compare(model, tok, path)
    print(f"random init: argmax agreement {agreement:.3f}, logits correlation {corr:.5f}")
    assert agreement >= 0.95 and corr >= 0.99


def test_llama_cpp_matches_dense_model_closely(tmp_path):
    """Without ternary weights and int8 activations only float rounding differs: this pins the
    graph itself (RoPE pairing, GQA, sub-norm placement, SwiGLU, tied head) to llama.cpp's."""
    model, tok = make_tiny_model(use_bitlinear=False)
    export_model(model, tok, tmp_path / "dense.gguf", None)
    agreement, corr = compare(model, tok, tmp_path / "dense.gguf")
    print(f"dense F16: argmax agreement {agreement:.3f}, logits correlation {corr:.7f}")
    assert agreement >= 0.99 and corr >= 0.99999


@pytest.fixture(scope="module")
def trained_model():
    model, tok = make_tiny_model(seed=3)
    model, loss = briefly_train(model, tok)
    assert loss < 5.5  # it learned something (uniform: ln 512 = 6.2)
    return model, tok, loss


@pytest.mark.parametrize("quant", ["tq2_0", "tq1_0"])
def test_llama_cpp_matches_trained_model(tmp_path, trained_model, quant):
    model, tok, loss = trained_model
    path = tmp_path / "trained.gguf"
    export_model(model, tok, path, None, quant=quant)
    agreement, corr = compare(model, tok, path)
    print(f"trained ({quant}, loss {loss:.2f}): argmax agreement {agreement:.3f}, logits correlation {corr:.5f}")
    assert agreement >= 0.95 and corr >= 0.99


def test_llama_cpp_tokenizes_like_us(random_model_gguf):
    _, tok, path = random_model_gguf
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, n_ctx=256, verbose=False)
    try:
        for text in TOKENIZER_CHECKS:
            theirs = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            assert theirs == tok.encode(text), text
            assert llm.detokenize(theirs, special=True) == text.encode("utf-8")
        # every token's own text, and the training distribution
        for i in range(3, tok.vocab_size):
            text = tok.decode([i])
            assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == tok.encode(text), repr(text)
        for text in generate_programs(50, seed=7):
            assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == tok.encode(text)
        assert llm.token_bos() == 0 and llm.token_eos() == 0
        assert llm.tokenize(b"fn", add_bos=True, special=True)[0] == 0  # add_bos_token: BOS = <|endoftext|>
    finally:
        llm.close()


def test_llama_cpp_loads_a_model_with_mtp_heads(tmp_path):
    """Every shipped config trains MTP heads: the n = 1 export stays a `bitnet` file llama.cpp
    runs (heads in the .mtp sidecar), with the same logits as the model's main head."""
    from nanochat_ternary.infer.gguf_model import read_gguf_model

    torch.set_flush_denormal(True)
    model, tok = make_tiny_model(use_mtp=True, mtp_n_tokens=2)
    s = export_model(model, tok, tmp_path / "mtp.gguf", None)
    assert s["arch"] == "bitnet" and s["mtp"]
    agreement, corr = compare(model, tok, tmp_path / "mtp.gguf")
    assert agreement >= 0.95 and corr >= 0.99
    assert read_gguf_model(tmp_path / "mtp.gguf").hp.n_mtp == 2  # our engine still has the heads
