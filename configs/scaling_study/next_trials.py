"""What the scaling study runs next, by the rules of its design (docs/scaling_study.md), from the logs so far.

    python configs/scaling_study/next_trials.py            # from the repository root

For each optimizer and batch size: the seed-1 lrs of the first horizon with their steps to the target and final
validation top-1, the best lr (fewest steps; ties, or no lr reaching the target, by final validation top-1), and
the trials the design asks for next, in its order:
  1. grow the lr grid by one x2 step on the side of the best while the best is at an end of the grid;
  2. below 2048, grow the horizon x1.5 (for both optimizers) when the best reaches the target only in the last
     10% of it, or not at all: the seed-1 grid again at the grown horizon, appended (the shorter one's entries
     stay, so that the configs still hold every trial run); a batch size's horizon is its longest entry's;
  3. at 2048 and 4096, a second horizon (x1.5) at the best lr and its better neighbour (there it is the growth
     of step 2; a batch size whose best over both horizons does not reach the target is reported as such);
  4. seeds 2 and 3 at the best setting over lrs and horizons (every horizon's seed-1 trials; where the best
     comes from a shorter horizon at an end of its grid, that grid grows first, as in step 1).
Then the config entries to append to configs/scaling_study/<optimizer>.yaml for them. Validation only: the test
set plays no part. Reads the logs through plot_results (store.py); trains nothing.
"""
import argparse
import math
import os
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import plot_results  # noqa: E402

TARGET = 72.5  # validation top-1 (%), fixed after the pilot; figures.sh draws with the same value
SECOND_HORIZON_BATCHES = (2048, 4096)
LATE = 0.9  # reaching the target after this fraction of the horizon's steps counts as late
SEEDS = (1, 2, 3)
# the per-batch-size keys a config entry carries beside *base (copied from the batch size's first entry)
ENTRY_KEYS = ("batch_size", "epochs", "warmup_fraction", "max_samples_per_gpu", "eval_every", "log_interval")


def read_grids(path):
    """{batch size: (its first config entry, the set of (lr, epochs, seed) its entries configure, its horizon)}
    of one study config (the entries resolved: *base merged). The horizon: the longest entry's epochs (a grown
    horizon's grid is appended), except at 2048 and 4096, where the longer entries are the second horizon."""
    with open(path) as f:
        entries = yaml.safe_load(f)
    grids = {}
    for entry in entries:
        first, configured = grids.setdefault(entry["batch_size"], (entry, set()))
        lrs = entry["lr"] if isinstance(entry["lr"], list) else [entry["lr"]]
        seeds = entry["seed"] if isinstance(entry["seed"], list) else [entry["seed"]]
        configured.update((float(lr), entry["epochs"], seed) for lr in lrs for seed in seeds)
    return {batch: (first, configured, first["epochs"] if batch in SECOND_HORIZON_BATCHES else
                    max(epochs for _, epochs, _ in configured))
            for batch, (first, configured) in grids.items()}


def grown(epochs):
    """A horizon x1.5, in whole epochs (rounded up: train.py counts whole epochs)."""
    return math.ceil(epochs * 1.5)


def diverged(trial):
    """A trial train.py stopped on a non-finite loss (its parameter file says so): done, and ranked last."""
    return trial["params"].get("diverged") is True


def rank(trial):
    """Sort key of a seed-1 trial: fewest steps to the target, then highest final validation top-1; a diverged
    trial last."""
    if diverged(trial):
        return (2, 0.0, 0.0)
    curve = plot_results._val_curve(trial)
    steps = plot_results.steps_to_target(curve, TARGET)
    final = curve[-1][1] if curve else float("-inf")
    return (0, steps, -final) if steps is not None else (1, 0.0, -final)


def plan(optimizer, batch, trials, horizon, configured):
    """(lines describing the batch size, [(lr, epochs, seed)] to run next, the horizon the design's growth rule
    asks for or None) for one optimizer and batch size; `configured`: the (lr, epochs, seed) its config entries
    already ask for. Nothing is decided while one of those has no finished (or diverged) trial."""
    mine = [t for t in trials if t["params"].get("optimizer") == optimizer and t["params"].get("batch_size") == batch]
    done = {(float(t["params"]["lr"]), t["params"]["epochs"], t["params"]["seed"]): t for t in mine
            if t["params"].get("finished") or diverged(t)}
    waiting = sorted(configured - set(done))
    lines = [f"{optimizer}, batch {batch}: horizon {horizon} epochs; {len(done)} finished or diverged trial(s)"]
    if waiting:
        return lines + [f"  {len(waiting)} configured trial(s) not finished (run run_study.sh): "
                        + "; ".join(f"lr {lr:g}, {e} epochs, seed {s}" for lr, e, s in waiting)], [], None
    first = {lr: t for (lr, epochs, seed), t in done.items() if epochs == horizon and seed == 1}
    if not first:
        return lines + ["  no finished seed-1 trial of the first horizon"], [], None
    for lr in sorted(first):
        steps, final = rank(first[lr])[1], -rank(first[lr])[2]
        reached = {0: f"{steps:.0f} steps", 1: "not reached", 2: "diverged"}[rank(first[lr])[0]]
        lines.append(f"  lr {lr:g}: {reached} to {TARGET:g}%, final val top-1 {final:.2f}")
    lrs = sorted(first)
    best = min(lrs, key=lambda lr: rank(first[lr]))
    lines.append(f"  best lr {best:g}")
    if best == lrs[0] or best == lrs[-1]:
        lr = best / 2 if best == lrs[0] else best * 2
        return lines + [f"  its best is at an end of the grid: grow it to lr {lr:g}"], [(lr, horizon, 1)], None
    trial = first[best]
    steps = plot_results.steps_to_target(plot_results._val_curve(trial), TARGET)
    total = trial["epochs"][-1]["iteration"]
    # where a second horizon is run, it is the horizon's growth (docs/scaling_study.md, Revisions)
    if (steps is None or steps > LATE * total) and batch not in SECOND_HORIZON_BATCHES:
        return lines + [f"  the best reaches the target {'not at all' if steps is None else 'late'}"], [], \
            grown(horizon)
    candidates = [((lr, horizon), first[lr]) for lr in lrs]
    shorter = {}  # below 2048: {epochs: {lr: trial}} of the seed-1 grids a grown horizon left behind
    if batch not in SECOND_HORIZON_BATCHES:
        for (lr, epochs, seed), t in done.items():
            if seed == 1 and epochs < horizon:
                shorter.setdefault(epochs, {})[lr] = t
        candidates += [((lr, epochs), t) for epochs, grid in shorter.items() for lr, t in grid.items()]
    todo = []
    if batch in SECOND_HORIZON_BATCHES:
        neighbours = [lr for lr in (best / 2, best * 2) if lr in first]
        neighbour = min(neighbours, key=lambda lr: rank(first[lr]))
        for lr in (best, neighbour):
            key = (lr, grown(horizon), 1)
            if key in done:
                candidates.append(((lr, grown(horizon)), done[key]))
            else:
                todo.append(key)
        if todo:
            return lines + [f"  second horizon ({grown(horizon)} epochs) at lr {best:g} and {neighbour:g}"], todo, None
    (lr, epochs), chosen = min(candidates, key=lambda c: rank(c[1]))
    if epochs in shorter:  # the best over lrs and horizons must be inside its own horizon's grid too (rule 1)
        grid = sorted(shorter[epochs])
        if lr == grid[0] or lr == grid[-1]:
            grow = lr / 2 if lr == grid[0] else lr * 2
            return lines + [f"  the best over lrs and horizons, lr {lr:g} at {epochs} epochs, is at an end of that "
                            f"horizon's grid: grow it to lr {grow:g}"], [(grow, epochs, 1)], None
    if rank(chosen)[0] == 1:
        lines.append(f"  no setting reaches the target: reported as not reached within "
                     f"{chosen['epochs'][-1]['iteration']} steps (a lower bound), left out of the B_crit fit")
    missing = [(lr, epochs, seed) for seed in SEEDS if (lr, epochs, seed) not in done]
    if missing:
        return lines + [f"  best setting lr {lr:g}, {epochs} epochs: seeds {', '.join(str(s) for *_, s in missing)}"
                        f" to run"], missing, None
    return lines + [f"  complete: best setting lr {lr:g}, {epochs} epochs, seeds {', '.join(map(str, SEEDS))}"], [], \
        None


def entries(grid, todo):
    """Config entries (YAML text) for the trials `todo` of one batch size, appended to its optimizer's config."""
    out = []
    by_run = {}
    for lr, epochs, seed in todo:
        by_run.setdefault((epochs, seed), []).append(lr)
    for (epochs, seed), lrs in sorted(by_run.items()):
        values = {**{k: grid[k] for k in ENTRY_KEYS if k in grid}, "epochs": epochs, "seed": seed, "lr": sorted(lrs)}
        body = yaml.safe_dump(values, default_flow_style=None, sort_keys=False).strip().replace("\n", "\n  ")
        out.append(f"- <<: *base\n  {body}")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=os.path.join(ROOT, "results", "scaling_study"),
                        help="the study's logroot (default: results/scaling_study)")
    parser.add_argument("--configs", default=os.path.join(ROOT, "configs", "scaling_study"),
                        help="the folder of lars.yaml and sgd.yaml (default: configs/scaling_study)")
    args = parser.parse_args(argv)
    studies = {}  # optimizer: (config name, {batch size: (first entry, configured, horizon)}, trials)
    for name, optimizer in (("lars", "LARS"), ("sgd", "SGD")):
        folder = os.path.join(args.results, f"scaling_{name}")
        try:
            trials = plot_results.read_experiment(folder) if os.path.isdir(folder) else []
        except plot_results.ResultsError:  # no trial has finished an epoch yet
            trials = []
        studies[optimizer] = (name, read_grids(os.path.join(args.configs, f"{name}.yaml")), trials)
    plans = {(optimizer, batch): plan(optimizer, batch, trials, grids[batch][2], grids[batch][1])
             for optimizer, (_, grids, trials) in studies.items() for batch in grids}
    # the horizon grows for both optimizers when either one's best reaches the target late
    growth = {}
    for (optimizer, batch), (_, _, horizon) in plans.items():
        if horizon is not None:
            growth.setdefault(batch, (horizon, optimizer))
    report = []
    for optimizer, (name, grids, _) in studies.items():
        additions = []
        for batch in sorted(grids, reverse=True):
            lines, todo, _ = plans[(optimizer, batch)]
            report += lines
            if batch in growth:
                horizon, by = growth[batch]
                first, configured, current = grids[batch]
                grid = sorted({lr for lr, epochs, seed in configured if epochs == current and seed == 1})
                lrs = " / ".join(f"{lr:g}" for lr in grid)
                report.append(f"  the horizon grows to {horizon} epochs for both optimizers ({by}'s best reaches the "
                              f"target late): its seed-1 grid again at {horizon} epochs, lr {lrs}")
                additions.append(entries(first, [(lr, horizon, 1) for lr in grid]))
            elif todo:
                additions.append(entries(grids[batch][0], todo))
        if additions:
            report += ["", f"append to configs/scaling_study/{name}.yaml:", *additions, ""]
    print("\n".join(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
