"""training.max_hours: the schedule decays in time, the run stops and checkpoints at the budget."""

import json

from nanochat_ternary.train.checkpoint import load_checkpoint
from nanochat_ternary.train.time_budget import out_of_time, schedule_step
from nanochat_ternary.train.trainer import train


def test_schedule_step_follows_the_larger_progress():
    assert schedule_step(5, 100.0, 0.0, 1000, 10) == 5  # no budget: steps
    assert schedule_step(5, 3000.0, 3600.0, 1000, 10) == 5  # warmup counts steps
    assert schedule_step(50, 1800.0, 3600.0, 1000, 10) == 500  # half the time: half the schedule
    assert schedule_step(900, 1800.0, 3600.0, 1000, 10) == 900  # faster than the budget: steps
    assert schedule_step(50, 7200.0, 3600.0, 1000, 10) == 1000
    assert not out_of_time(10.0, 0.0) and not out_of_time(10.0, 11.0) and out_of_time(11.0, 11.0)


def test_run_stops_at_the_budget_with_a_decayed_lr_and_a_checkpoint(tmp_path, tiny_dataset, tiny_config):
    t = tiny_config.training
    t.total_steps, t.max_hours, t.checkpoint_interval = 100_000, 1.5 / 3600, 100_000  # a 1.5 s budget
    t.stable_ratio, t.min_lr_ratio = 0.5, 0.1
    result = train(tiny_config, data=str(tiny_dataset), run_dir=tmp_path, quiet=True)
    assert 5 < result.steps < 100_000
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == result.steps and ckpt.meta["train_seconds"] >= 1.5
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    peak = t.learning_rate
    assert max(lrs) == peak  # warmup over, flat at the peak for the first half of the time
    assert lrs[-1] < 0.3 * peak  # then decayed towards min_lr_ratio by the budget, not by the step count
    assert lrs[-1] >= t.min_lr_ratio * peak - 1e-12

    # resuming a run whose budget is spent trains nothing more and keeps its checkpoint
    again = train(tiny_config, run_dir=tmp_path, resume=True, quiet=True)
    assert again.steps == result.steps and again.checkpoint == ckpt.path
