"""SFT: prompts tokenised exactly as the server does, loss on answers only, a real short run."""

import json

import pytest
import torch
from helpers import make_tiny_gguf

from nanochat_ternary.data.instruct import Pair, synthetic_pairs
from nanochat_ternary.data.tokenizer import CHAT_TEMPLATE
from nanochat_ternary.errors import DataError, NanochatError
from nanochat_ternary.train.sft_data import IGNORE, ChatRows, chat_batch, encode_pair, encode_pairs, template_for

PAIR = Pair("Write a Rust function `fn one() -> u32`.", "```rust\nfn one() -> u32 {\n    1\n}\n```", "one")


def test_prompt_tokens_match_what_the_server_sends(tmp_path):
    from nanochat_ternary.infer.engine import Engine
    from nanochat_ternary.serve.app import ChatTemplate
    from nanochat_ternary.serve.prompts import plan_chat
    from nanochat_ternary.serve.schemas import ChatCompletionRequest

    gguf, mhc, _ = make_tiny_gguf(tmp_path)
    engine = Engine.load(gguf, mhc)
    assert engine.chat_template == CHAT_TEMPLATE  # the GGUF carries the template SFT renders with
    tok = engine.tokenizer
    served = ChatTemplate(engine.chat_template, tok.decode_bytes([tok.bos_id]).decode(), tok.decode_bytes([tok.eos_id]).decode())
    req = ChatCompletionRequest(model=engine.name, messages=[{"role": "user", "content": PAIR.user}])
    prompt = plan_chat(req, engine, served, engine.name).prompts[0]
    ids, mask = encode_pair(tok, template_for(tok), PAIR)
    assert ids[:len(prompt)] == prompt and not any(mask[:len(prompt)]) and mask[len(prompt)] == 1


def test_targets_are_the_answer_and_its_stop_token_only(tmp_path):
    from helpers import tiny_tokenizer

    tok = tiny_tokenizer()
    per_conv = len(encode_pair(tok, template_for(tok), PAIR)[0])
    rows = ChatRows(tok, [PAIR], seq_len=200).rows()
    x, y = chat_batch(rows, 1)
    k = 201 // per_conv  # conversations are packed whole: as many as fit a row of 201 tokens
    assert x.shape == y.shape == (1, 200) and k >= 2
    assert tok.decode(y[0][y[0] != IGNORE].tolist()) == (PAIR.assistant + "<|im_end|>") * k
    with pytest.raises(DataError, match="raise --seq-length"):
        ChatRows(tok, [PAIR], seq_len=8)


def test_batch_encoding_gives_each_conversation_its_own_tokens():
    """encode_pairs (the tokenizer's batch encoder over all conversations) keeps every
    conversation's ids and mask with it: the same as encoding each one alone."""
    from helpers import tiny_tokenizer

    tok = tiny_tokenizer()
    template = template_for(tok)
    pairs = [PAIR] + synthetic_pairs(6, seed=3)
    one_by_one = [encode_pair(tok, template, pair) for pair in pairs]  # a batch of one each
    batched = encode_pairs(tok, template, pairs)
    assert batched == one_by_one and len({tuple(ids) for ids, _ in batched}) == len(pairs)


@pytest.fixture
def pretrained(tmp_path, tiny_dataset, tiny_config):
    from nanochat_ternary.train.trainer import train

    tiny_config.model.max_seq_len = 256
    train(tiny_config, data=str(tiny_dataset), run_dir=tmp_path / "base", quiet=True)
    return tmp_path / "base"


def test_sft_learns_answers_and_writes_an_exportable_run(tmp_path, pretrained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nanochat_ternary.export.checkpoint_source import load_for_export
    from nanochat_ternary.train.sft import SFTOptions, sft

    pairs = synthetic_pairs(60, seed=0, flavour="synthetic")
    opts = SFTOptions(steps=40, batch_size=2, seq_length=192, lr_scale=1.0, warmup_steps=2, pretrain_mix=0.5, log_interval=10)
    result = sft(pretrained, pairs, tmp_path / "sft", opts, device="cpu", quiet=True)
    first, last = result.losses[0], sum(result.losses[i] for i in range(35, 40)) / 5
    assert last < first - 0.5, (first, last)
    model, _, step_dir = load_for_export(tmp_path / "sft")
    assert step_dir.name == "step_40" and json.loads((step_dir / "meta.json").read_text())["stage"] == "sft"
    acc = EventAccumulator(str(tmp_path / "sft" / "tensorboard"))
    acc.Reload()
    assert {"sft/loss", "sft/ce_answer", "sft/ce_pretrain", "sft/lr", "sft/grad_norm"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("sft/ce_answer")] == [10, 20, 30, 40]
    assert not torch.equal(load_for_export(pretrained)[0].embed.weight, model.embed.weight)  # the base was trained further


def test_cli_sft_and_its_errors(tmp_path, pretrained, capsys):
    from nanochat_ternary.cli import main

    args = ["sft", "--checkpoint", str(pretrained), "--data", "synthetic-small", "--pairs", "20", "--steps", "2",
            "--batch-size", "2", "--seq-length", "192", "--device", "cpu"]
    assert main(args) == 0
    assert (pretrained / "sft" / "checkpoints" / "step_2" / "model.safetensors").is_file()
    assert main(args[:3] + ["--data", str(tmp_path / "missing")] + args[5:]) == 2
    assert "expected one of synthetic" in capsys.readouterr().err
    assert main(args + ["--seq-length", "999"]) == 2
    assert "exceeds the model's max_seq_len 256" in capsys.readouterr().err
    (tmp_path / "undocumented").mkdir()
    (tmp_path / "undocumented" / "a.rs").write_text("fn a() {}\n")
    (tmp_path / "undocumented" / "b.rs").write_text("fn b() {}\n")
    assert main(args[:3] + ["--data", str(tmp_path / "undocumented")] + args[5:]) == 2
    assert "no documented" in capsys.readouterr().err
    assert issubclass(DataError, NanochatError)
