"""8-bit optimizer states (nanochat_ternary/train/state8bit.py, used by Muon and Lion)."""

import copy
import shutil

import torch
from torch import nn

from nanochat_ternary.config import TrainingConfig
from nanochat_ternary.train import state8bit
from nanochat_ternary.train.checkpoint import load_checkpoint
from nanochat_ternary.train.lion import Lion
from nanochat_ternary.train.muon import Muon
from nanochat_ternary.train.optim import build_optimizers, optimizer_state_bytes
from nanochat_ternary.train.trainer import train


def test_roundtrip_keeps_small_values_a_linear_map_would_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 256, generator=g) * 0.01
    x[:, 0] = 1.0  # every block's absmax is 1 ...
    x[:, 1] = 1e-3  # ... and a value a linear int8 map (step 1/127) rounds to 0
    codes, absmax = state8bit.quantize(x)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape and absmax.shape == (64,)
    y = state8bit.dequantize(codes, absmax)
    assert torch.allclose(y[:, 1], x[:, 1], rtol=0.1)
    rel = (y - x).abs() / x.abs().clamp_min(1e-6)
    assert rel.median() < 0.05
    assert torch.equal(state8bit.dequantize(*state8bit.quantize(torch.zeros(4096))), torch.zeros(4096))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, 128)  # 8192 values: 8-bit
        self.proj = nn.Linear(128, 128)  # weight 16384: 8-bit, bias 128: fp32
        self.small = nn.Linear(128, 16, bias=False)  # 2048 values: stays fp32

    def forward(self, idx):
        return self.small(self.proj(self.embed(idx))).square().mean()


def _step(net, opts, seed):
    idx = torch.randint(0, 64, (32,), generator=torch.Generator().manual_seed(seed))
    net(idx).backward()
    for o in opts:
        o.step()
        o.zero_grad(set_to_none=True)


def test_states_are_codes_and_scales_and_track_fp32():
    torch.manual_seed(0)
    a = Net()
    b = Net()
    b.load_state_dict(a.state_dict())
    opts_a = build_optimizers(a, TrainingConfig())
    opts_b = build_optimizers(b, TrainingConfig(use_8bit_optim=True))
    assert isinstance(opts_b[0], Muon) and isinstance(opts_b[1], Lion)
    for s in range(5):
        _step(a, opts_a, s)
        _step(b, opts_b, s)
    muon_b, lion_b = opts_b
    st = lion_b.state[b.embed.weight]
    assert set(st) == {"exp_avg_codes", "exp_avg_absmax"}
    assert st["exp_avg_codes"].dtype == torch.uint8 and st["exp_avg_absmax"].shape == (8192 // 256,)
    assert set(muon_b.state[b.proj.weight]) == {"momentum_buffer_codes", "momentum_buffer_absmax"}
    assert muon_b.state[b.small.weight]["momentum_buffer"].dtype == torch.float32  # < 4096 values
    assert lion_b.state[b.proj.bias]["exp_avg"].dtype == torch.float32
    fp32, q8 = optimizer_state_bytes(opts_a), optimizer_state_bytes(opts_b)
    assert q8 == sum(state8bit.state_bytes(p.numel(), True) for p in b.parameters())
    assert q8 < 0.35 * fp32, (q8, fp32)
    # the 8-bit momentum is the fp32 one up to quantisation error
    m8 = state8bit.dequantize(st["exp_avg_codes"], st["exp_avg_absmax"])
    m32 = opts_a[1].state[a.embed.weight]["exp_avg"]
    assert (m8 - m32).norm() < 0.05 * m32.norm()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert (pa - pb).norm() < 0.05 * pa.norm()


def test_state_dict_roundtrip_and_switching_the_setting():
    torch.manual_seed(0)
    net = Net()
    opts = build_optimizers(net, TrainingConfig(use_8bit_optim=True))
    _step(net, opts, 0)
    saved = copy.deepcopy([o.state_dict() for o in opts])  # as through a file: no shared tensors
    twin = Net()
    twin.load_state_dict(net.state_dict())
    twin_opts = build_optimizers(twin, TrainingConfig(use_8bit_optim=True))
    for o, s in zip(twin_opts, saved):
        o.load_state_dict(s)
    _step(net, opts, 1)
    _step(twin, twin_opts, 1)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), twin.parameters()))
    # The saved groups carry eight_bit (as they carry lr); with the flag turned off after loading,
    # the 8-bit state becomes float32 on the next step, and the other way round.
    fp_opts = build_optimizers(twin, TrainingConfig())
    for o, s in zip(fp_opts, saved):
        o.load_state_dict(s)
        assert o.param_groups[0]["eight_bit"]
        o.param_groups[0]["eight_bit"] = False
    _step(twin, fp_opts, 2)
    assert fp_opts[1].state[twin.embed.weight]["exp_avg"].dtype == torch.float32
    assert "exp_avg_codes" not in fp_opts[1].state[twin.embed.weight]
    q_opts = build_optimizers(twin, TrainingConfig(use_8bit_optim=True))
    for o, s in zip(q_opts, copy.deepcopy([o.state_dict() for o in fp_opts])):
        o.load_state_dict(s)
        o.param_groups[0]["eight_bit"] = True
    _step(twin, q_opts, 3)
    assert set(q_opts[1].state[twin.embed.weight]) == {"exp_avg_codes", "exp_avg_absmax"}


def test_8bit_resume_continues_the_exact_run(tmp_path, tiny_dataset, tiny_config):
    tiny_config.training.use_8bit_optim = True
    full = train(tiny_config, data=str(tiny_dataset), run_dir=tmp_path / "a", quiet=True)
    ck = load_checkpoint(tmp_path / "a")
    lion_state = ck.optim_states[1]["state"]
    assert any(v.dtype == torch.uint8 for s in lion_state.values() for v in s.values())  # codes saved
    b = tmp_path / "b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "a/checkpoints/step_3", b / "checkpoints/step_3")
    (b / "checkpoints/latest").write_text("step_3")
    shutil.copy(tmp_path / "a/tokenizer.json", b / "tokenizer.json")
    resumed = train(tiny_config, run_dir=b, resume=True, quiet=True)
    assert sorted(resumed.losses) == [3, 4, 5]
    for step in (3, 4, 5):
        assert resumed.losses[step] == full.losses[step], step
