"""Learning-rate schedules (nanochat_ternary/train/schedule.py)."""

import math

import pytest

from nanochat_ternary.errors import ConfigError
from nanochat_ternary.train.schedule import lr_multiplier


def curve(total, warmup, kind, **kw):
    return [lr_multiplier(s, total, warmup, kind, **kw) for s in range(total + 1)]


def test_wsd_boundaries():
    f = lambda s: lr_multiplier(s, 100, 10, "wsd", stable_ratio=0.8, min_lr_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.1)  # 1 / warmup, not 0
    assert f(4) == pytest.approx(0.5)
    assert f(9) == 1.0 and f(10) == 1.0 and f(79) == 1.0
    assert f(80) == 1.0  # decay starts at stable_ratio * total_steps
    assert f(90) == pytest.approx(0.55)
    assert f(99) == pytest.approx(1.0 - 0.9 * 19 / 20)
    assert f(100) == pytest.approx(0.1) and f(150) == pytest.approx(0.1)


def test_wsd_pieces_are_monotonic():
    c = curve(200, 20, "wsd", stable_ratio=0.7, min_lr_ratio=0.0)
    warm, flat, decay = c[:20], c[20:140], c[140:]
    assert all(a < b for a, b in zip(warm, warm[1:]))
    assert all(v == 1.0 for v in flat)
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert c[-1] == 0.0


def test_cosine_and_constant():
    f = lambda s: lr_multiplier(s, 110, 10, "cosine", min_lr_ratio=0.2)  # noqa: E731
    assert f(0) == pytest.approx(0.1) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.6)  # half way: (1 + 0.2) / 2
    assert f(35) == pytest.approx(0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert f(110) == pytest.approx(0.2)
    c = curve(110, 10, "cosine", min_lr_ratio=0.2)[10:]
    assert all(a > b for a, b in zip(c, c[1:]))
    k = curve(50, 5, "constant")
    assert k[0] == pytest.approx(0.2) and all(v == 1.0 for v in k[4:])


def test_no_warmup_and_degenerate_ratios():
    assert lr_multiplier(0, 10, 0, "wsd") == 1.0
    assert lr_multiplier(0, 10, 0, "cosine") == 1.0
    assert lr_multiplier(9, 10, 0, "wsd", stable_ratio=1.0) == 1.0
    # warmup longer than the stable stretch: decay starts after warmup, stays continuous
    c = curve(20, 15, "wsd", stable_ratio=0.5, min_lr_ratio=0.0)
    assert c[14] == 1.0 and c[15] == 1.0 and c[16] == pytest.approx(0.8)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="schedule_type"):
        lr_multiplier(0, 10, 1, "linear")
    with pytest.raises(ConfigError, match="total_steps"):
        lr_multiplier(0, 0, 1)
    with pytest.raises(ConfigError, match="warmup_steps"):
        lr_multiplier(0, 10, -1)
    with pytest.raises(ConfigError, match="stable_ratio"):
        lr_multiplier(0, 10, 1, stable_ratio=1.5)
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        lr_multiplier(0, 10, 1, min_lr_ratio=-0.1)
    with pytest.raises(ValueError):
        lr_multiplier(-1, 10, 1)
