"""The time budget's arithmetic replayed on logged epoch walls (issue 24; no training).

    python benchmarks/budget_replay.py

The three same-budget runs of `bench_recipe.py --backbone=mobilenet_025 --regimes=flowers
--seeds=3` of 2026-12-06 06:19-06:28 (a quiet machine; `recipe_flowers_20261206.json`), as their
log lines give them: the budget, the time spent when fine-tuning was planned, the measured epoch,
the first epoch's wall without tracing (the re-plan's figure), the later epochs' walls and what
the run's end cost. Each is replayed through `tl_keras.recipe.budget_plan` as it stands (plan,
re-plan, the budget guard), with the end reserved at END_RESERVE_S and a new length costing no
trace (the cosine's length is a variable), and prints the epochs and the share of the budget the
run would have used. Arithmetic on one machine's walls, not a measurement.
"""

from __future__ import annotations

from tl_keras.recipe import budget_plan

RULE_EPOCHS = 12  # the recipe's fine-tuning epochs at 2,339 training images
END_RESERVE_S = 1.9  # saves, calibration's pass and trace, its report (paid: 1.6-2.1 s)
# seed: budget, spent at ft's plan, measured epoch, first epoch untraced, later epochs, end paid
RUNS = {
    0: (69.8, 8.41, 4.14, 3.78, [3.6, 3.6, 3.7, 3.7, 3.6, 3.5, 3.8, 3.7, 3.6, 3.5, 3.5, 3.7], 1.59),
    1: (63.0, 8.85, 3.65, 3.78, [3.9, 3.9, 3.8, 3.8, 3.9, 3.7, 4.0, 3.8, 3.8, 3.8, 4.0], 1.57),
    2: (69.07, 9.22, 4.02, 3.90, [5.0, 3.8, 4.0, 3.7, 3.8, 3.9, 3.7, 3.6, 3.7, 3.6, 3.8], 2.06),
}


def replay(seed: int, slower: float = 1.0) -> tuple[int, int, float]:
    """(planned epochs, re-planned epochs, used share) of one run; `slower` scales the epochs
    after the re-plan (a machine that slows down after the last look)."""
    budget_s, spent, measured, first, later, end = RUNS[seed]
    later = [e * slower for e in later] + [slower * sum(later) / len(later)] * 20
    cost = budget_plan.EpochCost(train_s=measured)
    planned = budget_plan.plan_epochs(
        budget_s, spent, cost, reserve_s=END_RESERVE_S, unchanged=RULE_EPOCHS
    )
    left = budget_plan.phase_time_s(budget_s, spent, reserve_s=END_RESERVE_S)
    ceiling = budget_plan.replan_ceiling(planned)
    epochs = budget_plan.replan_epochs(
        left - first, first, done=1, planned=planned, ceiling=ceiling
    )
    clock = spent + first
    for epoch_s in later[: epochs - 1]:  # the guard: no epoch that would end past the budget
        if clock + epoch_s + END_RESERVE_S > budget_s:
            break
        clock += epoch_s
    return planned, epochs, round((clock + end) / budget_s, 3)


def main() -> None:
    for seed in RUNS:
        planned, epochs, used = replay(seed)
        slow, fast = replay(seed, 1.05)[2], replay(seed, 0.95)[2]
        print(
            f"seed {seed}: planned {planned}, re-planned {epochs} epochs: used {used} of the "
            f"budget (later epochs 5% slower: {slow}; 5% faster: {fast})"
        )


if __name__ == "__main__":
    main()
