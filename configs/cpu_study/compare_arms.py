"""The CPU-scale study's comparisons under the rule written before it ran (docs/cpu_study.md).

    python configs/cpu_study/compare_arms.py results/cpu_study --out images/cpu_study/comparisons.md

Each comparison sets two points of the study side by side at one batch size: a point is one arm's recipe at
that batch size, its final test top-1 over seeds (finished trials only) as mean and spread (max - min). Where
an arm has an lr grid at that batch size, its point is the grid's best mean; that choice is made on the same
test accuracy, which favours the gridded arm by the seed noise of the choice (said in the output).
A difference counts when it exceeds twice the larger of the two spreads and 1 point; with fewer than two
finished seeds on a side nothing can count ("too few seeds").
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import plot_results  # noqa: E402
import store  # noqa: E402

MIN_POINTS = 1.0  # a difference must also exceed this many points of top-1
SPREAD_FACTOR = 2.0  # ... and this multiple of the larger seed-to-seed spread (max - min)

SMALLEST, LARGE = 64, (1024, 2048)
# (question, arm A, arm B, batch sizes, what A's setting must be (None: best of its grid), same for B
#  ("same lr": B's trials at A's lr, the only difference being the arm's own change))
COMPARISONS = [
    ("large-batch drop of tuned LARS (vs its batch 64)", "cpu_lars_tuned", "cpu_lars_tuned", LARGE, None, None),
    ("the lr alone: seed recipe with its best lr vs as published", "cpu_seed_lr", "cpu_seed", LARGE, None, None),
    ("the recipe: tuned LARS vs the seed recipe", "cpu_lars_tuned", "cpu_seed", (SMALLEST, 256) + LARGE, None, None),
    ("the optimizer: tuned LARS vs Nesterov SGD, same extras", "cpu_lars_tuned", "cpu_sgd_nesterov_tuned",
     (SMALLEST, 256) + LARGE, None, None),
    ("large-batch drop of Nesterov SGD (vs its batch 64; not in the design)", "cpu_sgd_nesterov_tuned",
     "cpu_sgd_nesterov_tuned", LARGE, None, None),
    ("BatchNorm's batch: ghost BN 32 vs 128 (tuned LARS, same lr)", "cpu_ghost_bn", "cpu_lars_tuned", (2048,),
     {"ghost_batch_size": 32}, "same lr"),
    ("BatchNorm's batch: whole micro-batch vs ghost BN 128 (tuned LARS, same lr)", "cpu_ghost_bn",
     "cpu_lars_tuned", (2048,), {"ghost_batch_size": 0}, "same lr"),
]


BATCH_SIZES = (SMALLEST, 256) + LARGE
# The main table: (row, arm, setting); each cell is the arm's point at that batch size, as in the comparisons
MAIN_TABLE = [
    ("1 seed recipe", "cpu_seed", None),
    ("2 seed recipe, only the lr changed", "cpu_seed_lr", None),
    ("3 tuned LARS (ghost BN 128)", "cpu_lars_tuned", None),
    ("4 Nesterov SGD, same extras", "cpu_sgd_nesterov_tuned", None),
    ("5 tuned LARS, ghost BN 32", "cpu_ghost_bn", {"ghost_batch_size": 32}),
    ("5 tuned LARS, BN over the whole micro-batch", "cpu_ghost_bn", {"ghost_batch_size": 0}),
]


def finished_points(trials):
    """(experiment, batch size) -> [(recipe, [final top-1 of each finished seed])], and
    (experiment, batch size) -> optimizer steps of its finished trials."""
    summarized = [plot_results.summarize(t) for t in trials]
    groups, steps = {}, {}
    for t in summarized:
        if t["finished"] and t["final_top1"] is not None:
            key = plot_results._key(sorted(t["recipe"].items()))
            groups.setdefault((t["experiment"], t["batch_size"]), {}).setdefault(key, (t["recipe"], []))[1].append(
                t["final_top1"])
            steps[(t["experiment"], t["batch_size"])] = t["steps"]
    return {k: list(v.values()) for k, v in groups.items()}, steps


def pick(points, experiment, batch_size, setting):
    """The point of `experiment` at `batch_size`: the one matching `setting`, or the best mean of its grid.
    Returns (finals, label, recipe) or None when it has no finished trial."""
    candidates = [(recipe, finals) for recipe, finals in points.get((experiment, batch_size), [])
                  if not setting or all(recipe.get(k) == v for k, v in setting.items())]
    if not candidates:
        return None
    recipe, finals = max(candidates, key=lambda c: (len(c[1]) >= 2, sum(c[1]) / len(c[1])))
    grid = len(candidates) > 1 and not setting
    label = f"{experiment} lr={recipe.get('lr'):g}" + (" (best of its grid)" if grid else "")
    return finals, label, recipe


def stats(finals):
    return sum(finals) / len(finals), max(finals) - min(finals)


def verdict(a, b):
    """One line: the two means, their spreads, the difference and whether it counts under the rule."""
    (mean_a, spread_a), (mean_b, spread_b) = stats(a), stats(b)
    diff = mean_a - mean_b
    if min(len(a), len(b)) < 2:
        outcome = "too few seeds"
    else:
        threshold = max(SPREAD_FACTOR * max(spread_a, spread_b), MIN_POINTS)
        outcome = (f"counts (> {threshold:.2f})" if abs(diff) > threshold
                   else f"inconclusive (needs > {threshold:.2f})")
    return (f"{mean_a:.2f} ± {spread_a / 2:.2f} (n={len(a)}) vs {mean_b:.2f} ± {spread_b / 2:.2f} (n={len(b)}): "
            f"{diff:+.2f} points, {outcome}")


def main_table(points, steps):
    """Markdown lines: one row per arm, one column per batch size, the arm's point (best of its grid)."""
    lines = ["## Main table", "",
             "Final test top-1 (%) after 6 epochs, mean ± half the range (seeds, the grid's best lr); "
             "steps = optimizer steps per trial.", "",
             "| arm | " + " | ".join(f"batch {b}" for b in BATCH_SIZES) + " |",
             "| --- |" + " ---: |" * len(BATCH_SIZES)]
    for row, arm, setting in MAIN_TABLE:
        cells = []
        for batch_size in BATCH_SIZES:
            point = pick(points, arm, batch_size, setting)
            if point is None:
                cells.append("—")
                continue
            mean, spread = stats(point[0])
            cells.append(f"{mean:.2f} ± {spread / 2:.2f} (n={len(point[0])}, lr {point[2].get('lr'):g}, "
                         f"{steps[(arm, batch_size)]} steps)")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines + [""]


def compare(trials):
    """The main table and the comparisons as markdown lines."""
    points, steps = finished_points(trials)
    lines = ["# The study's comparisons", "",
             "Final test top-1 (%), mean ± half the range over finished seeds; a difference counts when it exceeds "
             f"{SPREAD_FACTOR:g}× the larger range (max − min) and {MIN_POINTS:g} point. A grid's best is chosen on "
             "the same test accuracy (a small bias in favour of the gridded arm).", "",
             *main_table(points, steps)]
    for question, arm_a, arm_b, batch_sizes, setting_a, setting_b in COMPARISONS:
        lines.append(f"## {question}")
        for batch_size in batch_sizes:
            a = pick(points, arm_a, batch_size, setting_a)
            wanted_b = setting_b
            if setting_b == "same lr":
                wanted_b = {"lr": a[2]["lr"]} if a is not None else {}
            b = pick(points, arm_b, SMALLEST if arm_a == arm_b else batch_size, wanted_b)
            if a is None or b is None:
                lines.append(f"- batch {batch_size}: not run yet")
                continue
            against = f" vs batch {SMALLEST}" if arm_a == arm_b else ""
            lines.append(f"- batch {batch_size}{against}: {a[1]} vs {b[1]}: {verdict(a[0], b[0])}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("logroot", help="the study's logroot (results/cpu_study)")
    ap.add_argument("--out", help="also write the comparisons to this markdown file")
    args = ap.parse_args(argv)
    experiments = sorted(os.path.join(args.logroot, name) for name in os.listdir(args.logroot)
                         if os.path.isdir(os.path.join(args.logroot, name)))
    text = compare(plot_results.read_all(experiments))
    print(text)
    if args.out:
        store.write_atomically(args.out, lambda f: f.write((text + "\n").encode()))
    return text


if __name__ == "__main__":
    main()
