"""A wall-clock budget for a run (training.max_hours): the schedule decays in time, not in steps.

Why this module exists: a job booked for 8 hours should end with a decayed learning rate and a
checkpoint at 8 hours, whatever its speed turns out to be. With a budget, the schedule of
schedule.py is driven by the larger of two progress measures: the step count and the elapsed
share of the budget mapped onto the step range (`schedule_step`). A run slower than
`total_steps` in `max_hours` so enters WSD's decay at `stable_ratio` of its time and reaches
`min_lr_ratio` at the budget; a faster one follows the steps as without a budget. Warmup always
counts steps. The run stops, and checkpoints, once the elapsed training time reaches the budget.

Elapsed time is training time summed over resumes (it is saved in the checkpoint), so an
interrupted 8-hour run resumed later still stops after 8 hours of training in all.
"""

from __future__ import annotations


def schedule_step(step: int, elapsed_s: float, budget_s: float, total_steps: int, warmup_steps: int) -> int:
    """The step at which to read the learning-rate schedule (0 <= result <= total_steps)."""
    if budget_s <= 0 or step < warmup_steps:
        return step
    by_time = int(elapsed_s / budget_s * total_steps)
    return min(max(step, by_time), total_steps)


def out_of_time(elapsed_s: float, budget_s: float) -> bool:
    return budget_s > 0 and elapsed_s >= budget_s
