"""Paper figures and a results table from logged trials (complete or still running).

    python plot_results.py logs/seed_table logs/lars_tuned logs/sgd_nesterov_tuned --out images/study

Each argument is an experiment folder (LOGROOT/EXPERIMENT, one config). Writes into --out (default ./plots):
  accuracy_vs_batch.png/.pdf     final test top-1 against batch size: one line per experiment (mean over
                                 seeds, min-max bars), the seed's published tables, chance
  test_accuracy_curves.png/.pdf  test top-1 against epoch and against optimizer steps
  train_loss.png/.pdf            training loss (log scale) against epoch; diverged trials marked with an x
  setting_<key>.png/.pdf         where an experiment sweeps a setting (lr, schedule, ...) at a fixed batch
                                 size: final test top-1 against that setting
  results_table.md               one row per (experiment, batch size, setting)
  trust_ratios.png/.pdf, .md     with trials run with --log_trust_ratios: LARS's trust ratio per layer over
                                 steps, and ||w||, ||g||, their ratio per layer at the first and last logged step
                                 (with --target: at the smallest and largest batch size's best setting)
  steps_to_target.png/.pdf, .md, .csv   with --target T (trials run with --val_size): optimizer steps to T%
                                 validation top-1 against batch size (see --help); the .md also holds the final
                                 test top-1 at each best setting, the steps ratio between optimizers, the B_crit fits
  noise_scale.png/.pdf, .md      with --target T and trials run with --noise_scale: the gradient noise scale
                                 B_simple over training at each batch size's best setting, beside the fitted
                                 critical batch size

Grouping: a trial's param map lists in `recipe_keys` the parameters that define what it computes. Within
one experiment, trials that share every recipe key except `seed` are the seeds of one point; a recipe key
(other than batch_size and seed) that takes several values among the trials of one batch size is a
"setting" of that batch size. "Final" is the evaluation after the last completed epoch; the spread over
seeds is min-max. A trial is diverged when a logged loss is NaN or infinite, partial when it has not
completed all its epochs (`finished` false). Nothing is written unless every folder reads cleanly.
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import textwrap
import zlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402


class ResultsError(Exception):
    """Results that cannot be read or used; the message starts with the offending path."""


# ================================================================ reading (the only part that touches files)

def read_experiment(path):
    """Read one experiment folder LOGROOT/EXPERIMENT through store.py into a list of plain dicts, one per
    trial, in trial-id order:

        {"experiment": str,        # the folder's name
         "path": str,              # the experiment folder, as given
         "param_path": str,        # LOGROOT/EXPERIMENT/trials/<id>_param_map.json (named in error messages)
         "trial_id": str,
         "params": dict,           # the param map as stored (recipe_keys, batch_size, epochs, finished, ...)
         "epochs": [dict, ...],    # the rows with kind == "epoch", one per epoch (the last logged wins),
                                   # in epoch order; [] when none has completed yet
         "evals": [dict, ...],     # the rows with kind == "eval" (--val_size), one per step, in step order
         "trust": [dict, ...],     # the rows with kind == "trust" (--log_trust_ratios), in step order
         "noise": [dict, ...]}     # the rows with kind == "step" that carry noise_scale (--noise_scale)

    Raises ResultsError (message starting with the offending path) for a missing folder, a folder without
    trials, an unreadable param map or result line, or an experiment none of whose trials finished an epoch.
    """
    import store  # the one module that knows the files on disk (reads through skeletor)

    try:
        stored = store.read_experiment(path)
    except store.StoreError as e:
        raise ResultsError(str(e)) from None
    experiment = os.path.basename(os.path.normpath(path))
    name = next((n for n in (config_name(params) for params, _ in stored) if n), None)
    trials = []
    for params, rows in stored:
        by_epoch = {int(r["epoch"]): r for r in rows if r.get("kind") == "epoch" and r.get("epoch") is not None}
        by_step = {kind: {int(r["iteration"]): r for r in rows if r.get("kind") == kind
                          and _finite(r.get("iteration"))} for kind in ("eval", "trust")}
        by_step["noise"] = {int(r["iteration"]): r for r in rows if r.get("kind") == "step"
                            and _finite(r.get("iteration")) and "noise_scale" in r}
        trials.append({"experiment": experiment, "path": path, "param_path": store.params_path(path, params["trial_id"]),
                       "trial_id": str(params["trial_id"]), "params": params, "name": name,
                       "epochs": [by_epoch[e] for e in sorted(by_epoch)],
                       **{kind + ("s" if kind == "eval" else ""): [rs[i] for i in sorted(rs)]
                          for kind, rs in by_step.items()}})
    if not any(t["epochs"] for t in trials):
        raise ResultsError(f"{path}: no results yet (none of its {len(trials)} trial(s) has completed an epoch)")
    return sorted(trials, key=lambda t: t["trial_id"])


def config_name(params):
    """The `name:` of the config a trial was run from (its invocation's --config, relative to the folder it
    ran in or to this repository), or None: a readable name for the figures."""
    import shlex
    import yaml
    try:
        words = shlex.split(params.get("invocation") or "")
    except ValueError:
        return None
    paths = [w.split("=", 1)[1] for w in words if w.startswith("--config=")]
    paths += [b for a, b in zip(words, words[1:]) if a == "--config"]
    for path in paths:
        for folder in ("", os.path.dirname(os.path.abspath(__file__))):
            try:
                with open(os.path.join(folder, path)) as f:
                    raw = yaml.safe_load(f)
            except (OSError, yaml.YAMLError):
                continue
            first = raw[0] if isinstance(raw, list) and raw else raw
            if isinstance(first, dict) and isinstance(first.get("name"), str):
                return first["name"]
    return None


def read_all(paths):
    """read_experiment over every folder; experiments named by their folder, or by their path where two
    folders share a name (same name under two logroots). A running study may have an experiment whose trials
    have not finished an epoch yet: it is left out with a note, unless no experiment has results."""
    trials, waiting = [], []
    for path in paths:
        try:
            trials.extend(read_experiment(path))
        except ResultsError as e:
            if "no results yet" not in str(e):
                raise
            waiting.append(e)
    if not trials:
        raise waiting[0]
    for e in waiting:
        print(f"plot_results.py: note: left out {e}", file=sys.stderr)
    if len({t["experiment"] for t in trials}) < len({os.path.normpath(p) for p in paths}):
        for t in trials:
            t["experiment"] = os.path.normpath(t["path"])
    return trials


# ================================================================ summaries and grouping (no files from here on)

# The seed's published tables: ResNet18 on CIFAR-10, LARS, 200 epochs, test top-1 (%) by batch size,
# with the poly schedule's power 2 and power 1.
SEED_POWER2 = {64: 89.39, 256: 85.45, 1024: 81.2, 4096: 73.41, 16384: 64.13}
SEED_POWER1 = {64: 89.97, 256: 86.59, 1024: 83.05, 4096: 76.92, 16384: 68.33}
SEED_SCALE = {"arch": "ResNet18", "dataset": "cifar10", "epochs": 200, "width": 64, "train_subset": 0}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
SPREAD = "min-max over seeds"


def _num(v):
    try:
        return float(v) if v is not None and not isinstance(v, bool) else math.nan
    except (TypeError, ValueError):
        return math.nan


def _finite(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def summarize(trial):
    """The trial dict plus what the figures and table use (curves as lists, final numbers, status)."""
    params, rows = trial["params"], trial["epochs"]
    recipe_keys = params.get("recipe_keys")
    if not isinstance(recipe_keys, list) or not recipe_keys or not all(isinstance(k, str) for k in recipe_keys):
        raise ResultsError(f"{trial['param_path']}: no recipe_keys list in the trial's parameters (logged by an "
                           f"older train.py); rerun the trial, or add the list of the flags that define it")
    epochs = [int(r["epoch"]) for r in rows]
    train_loss = [_num(r.get("train_loss")) for r in rows]
    test_loss = [_num(r.get("test_loss")) for r in rows]
    bad = [e for e, a, b, r in zip(epochs, train_loss, test_loss, rows)
           if not math.isfinite(a) or ("test_loss" in r and not math.isfinite(b))]
    planned = params.get("epochs")
    done = epochs[-1] if epochs else 0
    top1 = [_num(r.get("test_top1")) for r in rows]
    subset = params.get("test_subset") or 0
    return dict(trial,
                recipe={k: params.get(k) for k in recipe_keys if k != "seed"},
                seed=params.get("seed"),
                batch_size=params.get("batch_size"),
                optimizer=str(params.get("optimizer", "?")),
                epoch=epochs,
                step=[_num(r.get("iteration")) for r in rows],
                test_top1=top1,
                train_loss=train_loss,
                final_top1=top1[-1] if top1 and math.isfinite(top1[-1]) else None,
                final_val_top1=_num(rows[-1].get("val_top1")) if rows and _finite(rows[-1].get("val_top1")) else None,
                epochs_planned=planned,
                epochs_done=done,
                finished=params.get("finished") is True and planned is not None and done >= planned,
                diverged_epoch=bad[0] if bad else None,
                steps=int(rows[-1]["iteration"]) if rows and _finite(rows[-1].get("iteration")) else None,
                wall_minutes=sum(_num(r.get("epoch_seconds")) for r in rows if _finite(r.get("epoch_seconds"))) / 60,
                test_subset=subset if _finite(subset) and subset > 0 else 0)


def _key(value):
    return json.dumps(value, sort_keys=True)


def _fmt(value):
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(_fmt(v) for v in value)
    return str(value)


def _order(value):
    """A sort key that puts numbers in numeric order (16 after 4), then everything else by its text."""
    return (0, float(value), "") if _finite(value) else (1, 0.0, _fmt(value))


def setting_value(point, key):
    """The setting's value where it is placed on an axis or in an order: ghost_batch_size 0 (BatchNorm over
    the whole micro-batch) at the micro-batch's size, where it belongs among the ghost batch sizes."""
    value = dict(point["setting"])[key]
    if key == "ghost_batch_size" and value == 0:
        sizes = {t["params"].get("bn_batch_size") for t in point["trials"]}
        if len(sizes) == 1 and _finite(next(iter(sizes))):
            return sizes.pop()
    return value


def _setting_text(point, key, value):
    if key == "ghost_batch_size" and value == 0:
        size = setting_value(point, key)
        return f"{key}=0 (whole micro-batch" + (f" of {size})" if size else ")")
    return f"{key}={_fmt(value)}"


def group_points(trials):
    """Summarized trials -> points: one per (experiment, recipe without seed), sorted (experiment, batch,
    setting). A point is a dict: experiment, optimizer, batch_size, setting (tuple of (key, value)),
    setting_label ("lr=0.1, schedule=poly" or ""), trials (its seeds), and the statistics over seeds."""
    by_exp_batch = {}
    for t in trials:
        by_exp_batch.setdefault((t["experiment"], _key(t["batch_size"])), []).append(t)
    points = {}
    for group in by_exp_batch.values():
        keys = sorted({k for t in group for k in t["recipe"]} - {"batch_size", "seed"})
        varying = [k for k in keys if len({_key(t["recipe"].get(k)) for t in group}) > 1]
        for t in group:
            setting = tuple((k, t["recipe"].get(k)) for k in varying)
            recipe = _key(sorted(t["recipe"].items()))
            points.setdefault((t["experiment"], recipe), {"setting": setting, "trials": []})["trials"].append(t)
    out = []
    for (experiment, _), p in points.items():
        ts = sorted(p["trials"], key=lambda t: (_key(t["seed"]), t["trial_id"]))
        finals = [t["final_top1"] for t in ts if t["final_top1"] is not None]
        out.append({
            "experiment": experiment,
            "optimizer": "/".join(sorted({t["optimizer"] for t in ts})),
            "batch_size": ts[0]["batch_size"],
            "setting": p["setting"],
            "trials": ts,
            "n": len(ts),
            "n_final": len(finals),
            "mean": sum(finals) / len(finals) if finals else None,
            "min": min(finals) if finals else None,
            "max": max(finals) if finals else None,
            "val_mean": (sum(t["final_val_top1"] for t in ts) / len(ts)
                         if all(t["final_val_top1"] is not None for t in ts) else None),
            "partial": [t for t in ts if not t["finished"] and t["diverged_epoch"] is None],
            "diverged": [t for t in ts if t["diverged_epoch"] is not None],
            "test_subset": sorted({t["test_subset"] for t in ts if t["test_subset"]}),
        })
    for p in out:
        p["setting_label"] = ", ".join(_setting_text(p, k, v) for k, v in p["setting"])
    return sorted(out, key=lambda p: (p["experiment"], p["batch_size"] or 0,
                                      tuple((k, _order(setting_value(p, k))) for k, _ in p["setting"])))


def line_points(points):
    """Per (experiment, batch size): the point drawn on the lines of the batch-size and curve figures --
    the only one, or, where the batch size has a sweep, the setting with the best mean final validation top-1
    when all its settings have a validation split (--val_size), else the best mean final test top-1."""
    candidates = {}
    for p in points:
        if p["mean"] is not None:
            candidates.setdefault((p["experiment"], p["batch_size"]), []).append(p)
    best = []
    for ps in candidates.values():
        by_validation = all(p["val_mean"] is not None for p in ps)
        best.append(max(ps, key=lambda p: p["val_mean"] if by_validation else p["mean"]))
    return sorted(best, key=lambda p: (p["experiment"], p["batch_size"] or 0))


def picked_on_validation(points):
    """Whether line_points picked every swept batch size's setting on validation (else on test)."""
    return all(p["val_mean"] is not None for p in points if p["mean"] is not None)


def recipe_label(experiment, points):
    """The experiment's config `name:` (else its folder name) and its optimizers."""
    mine = [p for p in points if p["experiment"] == experiment]
    opts = sorted({p["optimizer"] for p in mine})
    name = next((t.get("name") for p in mine for t in p["trials"] if t.get("name")), None)
    return f"{name or experiment} ({'/'.join(opts)})"


# Colour-blind-safe colours (Okabe-Ito without yellow, plus a purple); no black or grey: those mark the
# seed's references. Ordered so that the project's configs (seed_table, lars_tuned, sgd_nesterov_tuned,
# sgd_baseline) hash to four clearly different colours. More than 7 recipes in one figure repeat colours.
PALETTE = ["#0072B2", "#D55E00", "#E69F00", "#009E73", "#6A3D9A", "#56B4E9", "#CC79A7"]


def recipe_colours(names):
    """{name: colour}: each name's preferred slot is a hash of the name (the same in every figure and every
    run); names that collide take the next free slot, in sorted order."""
    taken, colours = set(), {}
    for name in sorted(names):
        slot = zlib.crc32(name.encode()) % len(PALETTE)
        for i in range(len(PALETTE)):
            if (slot + i) % len(PALETTE) not in taken or len(taken) >= len(PALETTE):
                slot = (slot + i) % len(PALETTE)
                break
        taken.add(slot)
        colours[name] = PALETTE[slot]
    return colours


LINESTYLES = ["-", (0, (5, 1.5)), (0, (1, 1)), "-.", (0, (3, 1, 1, 1, 1, 1)), (0, (8, 2))]


def _shade(colour, i, n):
    """Batch sizes of one recipe: lighter for small, darker for large."""
    r, g, b = matplotlib.colors.to_rgb(colour)
    f = i / (n - 1) if n > 1 else 0.5
    if f < 0.5:
        a = (0.5 - f) * 1.0
        return (r + (1 - r) * a, g + (1 - g) * a, b + (1 - b) * a)
    a = (f - 0.5) * 0.6
    return (r * (1 - a), g * (1 - a), b * (1 - a))


def scale_description(trials):
    """'ResNet18 (width 8) on CIFAR-10 (10000 train images), 6 epochs' and whether that is the seed's scale."""
    def values(k):
        return sorted({_key(t["params"].get(k, SEED_SCALE[k])) for t in trials})
    parse = lambda vs: [json.loads(v) for v in vs]  # noqa: E731
    arch, width, dataset = parse(values("arch")), parse(values("width")), parse(values("dataset"))
    subset, epochs = parse(values("train_subset")), parse(values("epochs"))
    text = "/".join(map(str, arch))
    if width != [SEED_SCALE["width"]]:
        text += f" width {'/'.join(map(str, width))}"
    text += " on "
    if subset != [0]:
        text += f"{'/'.join('all' if not s else str(s) for s in subset)} training images of "
    text += "/".join(DATASET_NAMES.get(d, str(d)) for d in dataset)
    text += f", {'/'.join(map(str, epochs))} epochs"
    same = all(values(k) == [_key(v)] for k, v in SEED_SCALE.items())
    return text, same


# ================================================================ figures

FONT = {"font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
        "legend.fontsize": 7, "legend.title_fontsize": 7, "figure.titlesize": 9, "pdf.fonttype": 42}
WIDE = 7.0        # two-column paper: full text width
FOOT_SIZE = 6     # footer font size (pt)


def _figure(width, height, footer_lines, **kw):
    """A constrained-layout figure `height` inches tall above a footer: `footer_lines` wrapped to the width
    (measured with the renderer) in small grey type, with the space they need added at the bottom."""
    fig, axes = plt.subplots(figsize=(width, height), layout="constrained", **kw)
    text = fig.text(0.01, 0, "", fontsize=FOOT_SIZE, color="0.3", va="bottom", ha="left", linespacing=1.3)
    sample = "Reproduce: python plot_results.py logs/experiment --out plots, mean over seeds 0123456789"
    text.set_text(sample)
    char = text.get_window_extent(fig.canvas.get_renderer()).width / len(sample)
    chars = max(20, int(fig.bbox.width * 0.94 / char))
    lines = [w for line in footer_lines if line for w in textwrap.wrap(line, chars)]
    text.set_text("\n".join(lines))
    foot = (len(lines) * FOOT_SIZE * 1.3 + 5) / 72  # inches
    fig.set_size_inches(width, height + foot)
    text.set_y(2 / 72 / (height + foot))
    fig.get_layout_engine().set(rect=(0, foot / (height + foot), 1, 1 - foot / (height + foot)))
    return fig, axes


def _fit_title(fig, text, subtitle=None):
    """A suptitle (and a second line), shrunk until it fits the figure's width."""
    title = fig.suptitle(text + (f"\n{subtitle}" if subtitle else ""), linespacing=1.4)
    renderer = fig.canvas.get_renderer()
    size = title.get_fontsize()
    while size > 5 and title.get_window_extent(renderer).width > fig.bbox.width * 0.96:
        size -= 0.5
        title.set_fontsize(size)
    return title


def _batch_ticks(ax, sizes):
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(b) for b in sizes])
    ax.minorticks_off()


def _footer(common, command, note):
    return common + [f"Reproduce: {command}" if command else None, note]


def fig_accuracy_vs_batch(points, colours, scale, command, note):
    scale_text, seed_scale = scale
    drawn = line_points(points)
    experiments = sorted({p["experiment"] for p in drawn}, key=lambda e: recipe_label(e, points))
    has_sweep = len(drawn) < len([p for p in points if p["mean"] is not None])
    has_partial = any(p["partial"] for p in drawn)
    footer = [f"Points: mean over seeds of the final test top-1 (after the last completed epoch); "
              f"bars: {SPREAD}; n seeds beside each point (n=1: a single seed, diamond, no bar)."
              + ((" Where a batch size has a setting sweep, its best setting by final validation top-1 is on the "
                  "line" if picked_on_validation(points) else " Where a batch size has a setting sweep, its best "
                  "setting (by this same test top-1, so an optimistic pick) is on the line")
                 + ", the others are faint dots (see setting_*.png)." if has_sweep else "")
              + (" Hollow: includes unfinished trials." if has_partial else "")
              + (" x: a diverged seed (NaN/inf loss), included in the mean."
                 if any(p["diverged"] for p in drawn) else ""),
              "Right: the seed's published tables (LARS, ResNet18, CIFAR-10, 200 epochs), on their own axes."
              + ("" if seed_scale else f" NOTE: these trials are at a different scale ({scale_text}); "
                                       f"the seed's numbers are not directly comparable.")]
    fig, (ax, ax_seed) = _figure(WIDE, 3.0, _footer(footer, command, note), ncols=2,
                                 gridspec_kw={"width_ratios": [3, 1.2]})
    k = len(experiments)
    shown = []
    for i, exp in enumerate(experiments):
        colour = colours[exp]
        dodge = 2 ** (0.05 * (i - (k - 1) / 2))  # keep the bars of several lines apart
        ps = [p for p in drawn if p["experiment"] == exp]
        xs = [p["batch_size"] * dodge for p in ps]
        ys = [p["mean"] for p in ps]
        lo = [p["mean"] - p["min"] for p in ps]
        hi = [p["max"] - p["mean"] for p in ps]
        shown += [p["min"] for p in ps] + [p["max"] for p in ps]
        ax.plot(xs, ys, "-", color=colour, linewidth=1.4, label=recipe_label(exp, points), zorder=3)
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="none", ecolor=colour, elinewidth=1, capsize=2.5, zorder=3)
        for p, x, y in zip(ps, xs, ys):
            ax.plot([x], [y], "D" if p["n_final"] == 1 else "o", color=colour, markersize=4, zorder=4,
                    markerfacecolor="white" if p["partial"] else colour)
            ax.annotate(f"n={p['n_final']}", (x, y), xytext=(3, -8), textcoords="offset points", fontsize=5.5,
                        color=colour)
        bad = [(p["batch_size"] * dodge, t["final_top1"]) for p in ps for t in p["diverged"]
               if t["final_top1"] is not None]
        if bad:
            ax.plot(*zip(*bad), "x", color=colour, markersize=6, markeredgewidth=1.5, zorder=5)
        others = [p for p in points if p["experiment"] == exp and p["mean"] is not None and p not in ps]
        if others:
            ax.plot([p["batch_size"] * dodge for p in others], [p["mean"] for p in others], ".", color=colour,
                    alpha=0.45, markersize=4, zorder=2)
            shown += [p["mean"] for p in others]
    lo, hi = (min(shown), max(shown)) if shown else (0, 100)
    pad = max(1.0, 0.08 * (hi - lo))
    ax.set_ylim(max(0, lo - pad), min(100, hi + pad))
    datasets = sorted({t["params"].get("dataset", "cifar10") for p in points for t in p["trials"]})
    for d in datasets:
        chance = 100 / NUM_CLASSES.get(d, 10)
        if ax.get_ylim()[0] <= chance:
            ax.axhline(chance, color="0.6", linestyle=":", linewidth=1, zorder=1)
            ax.annotate(f"chance ({DATASET_NAMES.get(d, d)}, {chance:g}%)", (0, chance),
                        xycoords=("axes fraction", "data"), xytext=(3, 2), textcoords="offset points", ha="left",
                        va="bottom", fontsize=6, color="0.4")
    sizes = sorted({p["batch_size"] for p in points if p["batch_size"]})
    _batch_ticks(ax, sizes)
    ax.set_xlim(sizes[0] / 1.4, sizes[-1] * 1.4)
    ax.set_xlabel("batch size (log scale)")
    ax.set_ylabel("final test top-1 (%)")
    ax.grid(True, alpha=0.25, linewidth=0.5)
    seed_x = sorted(SEED_POWER2)
    ax_seed.plot(seed_x, [SEED_POWER2[b] for b in seed_x], "s-", color="black", markersize=3.5, linewidth=1,
                 label="seed's table, poly power 2")
    ax_seed.plot(seed_x, [SEED_POWER1[b] for b in seed_x], "^--", color="0.45", markersize=3.5, linewidth=1,
                 label="seed's table, poly power 1")
    _batch_ticks(ax_seed, seed_x)
    ax_seed.set_xticklabels([str(b) if i % 2 == 0 else "" for i, b in enumerate(seed_x)])
    ax_seed.set_xlim(seed_x[0] / 1.4, seed_x[-1] * 1.4)
    ax_seed.set_title("the seed's tables (200 epochs)", fontsize=7)
    ax_seed.set_xlabel("batch size (log scale)")
    ax_seed.grid(True, alpha=0.25, linewidth=0.5)
    handles = ax.get_legend_handles_labels()[0] + ax_seed.get_legend_handles_labels()[0]
    ax_seed.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.04, 1), borderaxespad=0, frameon=False)
    _fit_title(fig, "Final test top-1 vs batch size", scale_text)
    return fig


def _curve_legend(ax, experiments, colours, points, batch_sizes, extra=()):
    handles = [Line2D([], [], color=colours[e], linewidth=2, label=recipe_label(e, points)) for e in experiments]
    handles.append(Line2D([], [], linestyle="none", label=""))
    handles.append(Line2D([], [], linestyle="none", label="batch size:"))
    for i, b in enumerate(batch_sizes):
        handles.append(Line2D([], [], color=_shade("#404040", i, len(batch_sizes)), linewidth=1.2,
                              linestyle=LINESTYLES[i % len(LINESTYLES)], label=str(b)))
    handles.extend(extra)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False,
              handlelength=2.6)


def _mean_curve(trials, key, include):
    """{epoch: (step, mean, min, max)} over the trials for which include(t) holds, finite values only."""
    at = {}
    for t in trials:
        if not include(t):
            continue
        for e, s, v in zip(t["epoch"], t["step"], t[key]):
            if math.isfinite(v):
                at.setdefault(e, ([], []))
                at[e][0].append(s)
                at[e][1].append(v)
    return {e: (sum(s) / len(s), sum(v) / len(v), min(v), max(v)) for e, (s, v) in sorted(at.items())}


def _style(p, colours, batch_sizes):
    i = batch_sizes.index(p["batch_size"])
    return {"color": _shade(colours[p["experiment"]], i, len(batch_sizes)),
            "linestyle": LINESTYLES[i % len(LINESTYLES)]}


def fig_test_curves(points, colours, scale, command, note):
    drawn = line_points(points)
    experiments = sorted({p["experiment"] for p in drawn}, key=lambda e: recipe_label(e, points))
    batch_sizes = sorted({p["batch_size"] for p in drawn})
    diverged = any(p["diverged"] for p in drawn)
    footer = [f"Test top-1 after each epoch, mean over seeds; band: {SPREAD}. One row per experiment (its "
              f"colour), against epochs (left) and optimizer steps (right); shade and dash: batch size. Rows share "
              f"the y-range." + (" Diverged trials are left out (marked in train_loss)." if diverged else "")
              + (" Batch sizes with a setting sweep show their best setting."
                                          if len(drawn) < len([p for p in points if p["mean"] is not None]) else "")]
    fig, axes = _figure(WIDE, 1.9 * len(experiments) + 0.4, _footer(footer, command, note), ncols=2,
                        nrows=len(experiments), squeeze=False, sharey=True)
    for row, exp in zip(axes, experiments):
        ax_e, ax_s = row
        for p in (p for p in drawn if p["experiment"] == exp):
            healthy = [t for t in p["trials"] if t["diverged_epoch"] is None] or p["trials"]
            curve = _mean_curve(healthy, "test_top1", lambda t: True)
            if not curve:
                continue
            style = _style(p, colours, batch_sizes)
            epochs = list(curve)
            steps, mean, lo, hi = (list(v) for v in zip(*curve.values()))
            for ax, xs in ((ax_e, epochs), (ax_s, steps)):
                # a marker where a running trial has a single epoch so far (a line of one point is invisible)
                ax.plot(xs, mean, linewidth=1.1, marker="o" if len(xs) == 1 else None, markersize=3,
                        label=str(p["batch_size"]), **style)
                if len(healthy) > 1:
                    ax.fill_between(xs, lo, hi, color=style["color"], alpha=0.18, linewidth=0)
        ax_e.set_xlabel("epoch")
        ax_s.set_xlabel("optimizer steps (log scale)")
        ax_s.set_xscale("log")
        ax_s.xaxis.set_minor_formatter(NullFormatter())  # a narrow range would label its minor ticks, overlapping
        for ax in row:
            ax.grid(True, alpha=0.25, linewidth=0.5)
        ax_e.set_ylabel("test top-1 (%)")
        ax_e.set_title(recipe_label(exp, points), fontsize=7, loc="left", color=colours[exp])
        ax_e.xaxis.set_major_locator(MaxNLocator(integer=True))
    _curve_legend(axes[0][1], experiments, colours, points, batch_sizes)
    _fit_title(fig, "Test top-1 during training", scale[0])
    return fig


def fig_train_loss(points, colours, scale, command, note):
    drawn = line_points(points)
    experiments = sorted({p["experiment"] for p in drawn}, key=lambda e: recipe_label(e, points))
    batch_sizes = sorted({p["batch_size"] for p in drawn})
    diverged = [(p, t) for p in drawn for t in p["diverged"]]
    footer = ["Training loss (mean over the epoch), mean over the seeds that did not diverge, against epochs "
              "(left) and optimizer steps (right). Colour: experiment; shade and dash: batch size."
              + (" x: a diverged trial (NaN/inf loss) at the epoch it diverged; diverged trials do not set "
                 "the axis range." if diverged else "")]
    fig, (ax, ax_s) = _figure(WIDE, 2.8, _footer(footer, command, note), ncols=2, sharey=True)
    healthy_values = []
    for p in drawn:
        curve = _mean_curve(p["trials"], "train_loss", lambda t: t["diverged_epoch"] is None)
        style = _style(p, colours, batch_sizes)
        if curve:
            ax.plot(list(curve), [v[1] for v in curve.values()], linewidth=1.1,
                    marker="o" if len(curve) == 1 else None, markersize=3, **style)
            ax_s.plot([v[0] for v in curve.values()], [v[1] for v in curve.values()], linewidth=1.1,
                      marker="o" if len(curve) == 1 else None, markersize=3, **style)
            healthy_values += [v[1] for v in curve.values() if v[1] > 0]
        for t in p["diverged"]:
            xs = [e for e, v in zip(t["epoch"], t["train_loss"]) if math.isfinite(v) and e < t["diverged_epoch"]]
            ys = [v for e, v in zip(t["epoch"], t["train_loss"]) if math.isfinite(v) and e < t["diverged_epoch"]]
            if xs:
                ax.plot(xs, ys, linewidth=0.8, alpha=0.6, **style)
    if not healthy_values:  # every trial diverged: their finite values are all there is
        healthy_values = [v for p in drawn for t in p["trials"] for v in t["train_loss"] if math.isfinite(v) and v > 0]
    ax.set_yscale("log")
    if healthy_values:
        lo, hi = min(healthy_values), max(healthy_values)
        ax.set_ylim(lo / 1.3, hi * 1.6)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)  # 0.1, 1 rather than 10^-1, 10^0
    lo, hi = ax.get_ylim()
    ax.yaxis.set_minor_formatter(plain if hi / lo < 30 else NullFormatter())  # label 2, 3, ... in a narrow range
    top = ax.get_ylim()[1]
    for p, t in diverged:
        before = [v for e, v in zip(t["epoch"], t["train_loss"]) if math.isfinite(v) and e < t["diverged_epoch"]]
        y = min(before[-1], top) if before and before[-1] > 0 else top
        ax.plot([t["diverged_epoch"]], [y], "x", color=_style(p, colours, batch_sizes)["color"], markersize=7,
                markeredgewidth=1.8, clip_on=False, zorder=5)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (log scale)")
    ax_s.set_xscale("log")
    ax_s.set_xlabel("optimizer steps (log scale)")
    ax.set_title("vs epoch")
    ax_s.set_title("vs optimizer steps")
    for a in (ax, ax_s):
        a.grid(True, which="both", alpha=0.2, linewidth=0.5)
    extra = [Line2D([], [], linestyle="none", marker="x", color="black", markeredgewidth=1.5,
                    label="diverged (NaN/inf)")] if diverged else []
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _curve_legend(ax_s, experiments, colours, points, batch_sizes, extra)
    _fit_title(fig, "Training loss", scale[0])
    return fig


def sweeps(points):
    """{setting key: [(experiment, batch size, other settings label, [points])]} for every (experiment,
    batch size) where the key takes several values (panels of the setting_<key> figures)."""
    out = {}
    groups = {}
    for p in points:
        groups.setdefault((p["experiment"], p["batch_size"]), []).append(p)
    for (exp, batch), ps in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        keys = [k for k, _ in ps[0]["setting"]]
        for key in keys:
            panels = {}
            for p in ps:
                other = ", ".join(f"{k}={_fmt(v)}" for k, v in p["setting"] if k != key)
                panels.setdefault(other, []).append(p)
            for other, qs in sorted(panels.items()):
                if len({_key(dict(q["setting"])[key]) for q in qs}) > 1:
                    out.setdefault(key, []).append((exp, batch, other, qs))
    return out


def _scaled_lrs(q):
    """The lr actually used (after --lr_scaling) by a point's trials, when it differs from --lr."""
    used = sorted({t["params"].get("scaled_lr") for t in q["trials"] if _finite(t["params"].get("scaled_lr"))})
    base = dict(q["setting"]).get("lr")
    return used if used and any(abs(u - base) > 1e-12 * max(1.0, abs(base)) for u in used) else []


def fig_setting(key, panels, colours, points, command, note):
    n = len(panels)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    scaled = key == "lr" and any(_scaled_lrs(q) for *_, qs in panels for q in qs)
    footer = [f"Final test top-1, mean over seeds; bars: {SPREAD}; n seeds beside each point (n=1: a single seed, "
              f"diamond); hollow: includes unfinished trials. One panel per experiment and batch size (and the other "
              f"settings, where several vary); panels of a row share their y-range."
              + (" x: the base lr (--lr); in brackets the lr actually used, after --lr_scaling (recorded as "
                 "scaled_lr)." if scaled else "")
              + (" ghost_batch_size 0 (BatchNorm over the whole micro-batch) is placed at the micro-batch's size."
                 if key == "ghost_batch_size" else "")]
    fig, axes = _figure(max(3.5, 2.33 * ncols), 2.1 * nrows, _footer(footer, command, note),
                        ncols=ncols, nrows=nrows, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    row_ranges = {}
    for index, (ax, (exp, batch, other, qs)) in enumerate(zip(axes.flat, panels)):
        qs = [q for q in qs if q["mean"] is not None]
        values = [setting_value(q, key) for q in qs]
        numeric = all(_finite(v) for v in values)
        order = sorted(range(len(qs)), key=lambda i: _order(values[i]))
        ps = [qs[i] for i in order]
        labels = [_fmt(values[i]) for i in order]
        if key == "ghost_batch_size":
            labels = [f"{lab}\n(whole)" if dict(q["setting"])[key] == 0 else lab for lab, q in zip(labels, ps)]
        if scaled:
            labels = [f"{lab}\n({'/'.join(f'{u:.3g}' for u in _scaled_lrs(q))})" if _scaled_lrs(q) else lab
                      for lab, q in zip(labels, ps)]
        if numeric:
            xs = [values[i] for i in order]
            if min(xs) > 0 and max(xs) / min(xs) >= 8:
                ax.set_xscale("log", base=2 if all(float(x).is_integer() for x in xs) else 10)
            ax.set_xticks(xs)
            ax.set_xticklabels(labels)
            ax.minorticks_off()
        else:
            xs = list(range(len(qs)))
            ax.set_xticks(xs)
            ax.set_xticklabels(labels)
            ax.set_xlim(-0.5, len(xs) - 0.5)
        colour = colours[exp]
        ys = [q["mean"] for q in ps]
        ax.errorbar(xs, ys, yerr=[[q["mean"] - q["min"] for q in ps], [q["max"] - q["mean"] for q in ps]],
                    fmt="-" if numeric else "none", color=colour, capsize=2.5, linewidth=1.2)
        for x, q in zip(xs, ps):  # hollow: includes unfinished trials, as in accuracy_vs_batch
            ax.plot([x], [q["mean"]], "D" if q["n_final"] == 1 else "o", color=colour, markersize=4,
                    markerfacecolor="white" if q["partial"] else colour)
            ax.annotate(f"n={q['n_final']}", (x, q["mean"]), xytext=(3, -8), textcoords="offset points",
                        fontsize=5.5, color="0.3")
        ax.set_xlabel({"lr": "base lr (--lr)" + (" (lr used)" if scaled else "")}.get(key, key))
        ax.set_ylabel("final test top-1 (%)")
        ax.grid(True, alpha=0.25, linewidth=0.5)
        title = f"{recipe_label(exp, points)}\nbatch {batch}" + (f", {other}" if other else "")
        ax.set_title(title, fontsize=7)
        lo, hi = min(q["min"] for q in ps), max(q["max"] for q in ps)
        row = index // ncols
        old = row_ranges.get(row, (lo, hi))
        row_ranges[row] = (min(old[0], lo), max(old[1], hi))
    for index, ax in enumerate(axes.flat[:n]):
        lo, hi = row_ranges[index // ncols]
        pad = max(1.0, (hi - lo) * 0.15)
        ax.set_ylim(max(0, lo - pad), min(100, hi + pad))
    _fit_title(fig, f"Final test top-1 vs {key}")
    return fig


def _safe(name):
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def build_figures(trials, command=None, note=None, target=None):
    """Summarized-or-raw trial dicts (as read_experiment returns) -> {file stem: Figure}, nothing saved.
    The caller saves and closes them (save_figures). `target`: trust ratios at the best settings by steps to it."""
    points = group_points([t if "recipe" in t else summarize(t) for t in trials])
    plotted = [t for p in points for t in p["trials"]]
    colours = recipe_colours({p["experiment"] for p in points})
    scale = scale_description(plotted)
    with plt.rc_context(FONT):
        figures = {"accuracy_vs_batch": fig_accuracy_vs_batch(points, colours, scale, command, note),
                   "test_accuracy_curves": fig_test_curves(points, colours, scale, command, note),
                   "train_loss": fig_train_loss(points, colours, scale, command, note)}
        for key, panels in sweeps(points).items():
            figures[f"setting_{_safe(key)}"] = fig_setting(key, panels, colours, points, command, note)
        pairs = trust_trials(points, target)
        if pairs:
            figures["trust_ratios"] = fig_trust_ratios(pairs, command, note, target)
    return figures


# ================================================================ per-layer trust ratios (--log_trust_ratios)

TRUST_TABLE = "trust_ratios.md"


def trust_trials(points, target=None):
    """[(point, trial)]: for each line point (as drawn in the other figures) its first seed with trust rows.
    With a `target`: the smallest and the largest batch size of each experiment, each at its best setting by
    steps to the target (`best_per_batch`), first seed with trust rows: LARS at small and at large batch."""
    if target is None:
        chosen = line_points(points)
    else:
        with_rows = [p for p in best_per_batch(target_points(points, target)).values()
                     if any(t.get("trust") for t in p["trials"])]
        chosen = []
        for experiment in sorted({p["experiment"] for p in with_rows}):
            ps = sorted((p for p in with_rows if p["experiment"] == experiment), key=lambda p: p["batch_size"])
            chosen += ps[:1] + ps[1:][-1:]  # the two ends (one when there is one)
    out = []
    for p in chosen:
        t = next((t for t in p["trials"] if t.get("trust")), None)
        if t is not None:
            out.append((p, t))
    return out


def _layer_series(trial, layer, key):
    return [(r["iteration"], r[key][r["layers"].index(layer)]) for r in trial["trust"] if layer in r["layers"]]


def fig_trust_ratios(pairs, command, note, target=None):
    n = len(pairs)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    footer = ["The trust ratio lambda LARS used for each adapted layer (its own computation, logged every "
              "--log_interval steps), one line per layer, colour from the first layer (dark) to the last (light). "
              + ("One panel per experiment and batch size (its best setting, first seed with these rows); "
                 if target is None else
                 f"The smallest and the largest batch size with these rows, each at its best setting by steps to "
                 f"{target:g}% validation top-1 (first seed with these rows); ")
              + "trust_ratios.md gives ||w||, ||grad w|| and their ratio per layer at the start and end."]
    fig, axes = _figure(max(3.5, 2.33 * ncols), 2.0 * nrows, _footer(footer, command, note), ncols=ncols,
                        nrows=nrows, squeeze=False, sharey=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    cmap = plt.get_cmap("viridis")
    for ax, (p, t) in zip(axes.flat, pairs):
        layers = t["trust"][0]["layers"]
        for i, layer in enumerate(layers):
            series = [(x, y) for x, y in _layer_series(t, layer, "trust_ratio") if _finite(y) and y > 0]
            if series:
                ax.plot(*zip(*series), color=cmap(0.9 * i / max(1, len(layers) - 1)), linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer steps")
        ax.set_ylabel("trust ratio (log scale)")
        ax.grid(True, which="both", alpha=0.2, linewidth=0.5)
        ax.set_title(f"{p['experiment']}, batch {p['batch_size']}, seed {t['seed']}", fontsize=7)
    _fit_title(fig, "Per-layer LARS trust ratio during training")
    return fig


def trust_table(pairs):
    """The LARS paper's per-layer table (its Table 1: ||w|| / ||grad w|| by layer) at the first and the last
    logged step of each trial drawn in fig_trust_ratios."""
    lines = ["# Per-layer norms and trust ratios, first and last logged step", "",
             "||w|| and ||g|| (the gradient, before weight decay) of each adapted layer, their ratio, and the trust "
             "ratio LARS used, as logged by --log_trust_ratios.", ""]
    for p, t in pairs:
        first, last = t["trust"][0], t["trust"][-1]
        lines += [f"## {p['experiment']}, batch {p['batch_size']}"
                  + (f" ({p['setting_label']})" if p["setting_label"] else "")
                  + f", seed {t['seed']}: steps {first['iteration']} and {last['iteration']}", "",
                  "| layer | ‖w‖ | ‖g‖ | ‖w‖/‖g‖ | trust ratio | ‖w‖ (end) | ‖g‖ (end) | ‖w‖/‖g‖ (end) | "
                  "trust ratio (end) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for layer in first["layers"]:
            cells = [layer]
            for row in (first, last):
                if layer not in row["layers"]:
                    cells += ["—"] * 4
                    continue
                i = row["layers"].index(layer)
                w, g, ratio = row["weight_norm"][i], row["grad_norm"][i], row["trust_ratio"][i]
                cells += [f"{w:.4g}", f"{g:.4g}", f"{w / g:.4g}" if g else "—", f"{ratio:.4g}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# ================================================================ steps to a validation target

STEPS_NOTE = ("steps-to-target: the optimizer step at which validation top-1 first reaches the target, linearly "
              "interpolated between the first evaluation at or above it and the evaluation before it (at the "
              "first evaluation itself when that one already reaches it)")
BOOTSTRAP_RESAMPLES = 1000


def steps_to_target(evals, target):
    """The step at which validation top-1 reaches `target` (interpolated, see STEPS_NOTE), or None when no
    evaluation reaches it. `evals`: [(step, val_top1)] in step order."""
    previous = None
    for step, top1 in evals:
        if top1 >= target:
            if previous is None or top1 == previous[1]:
                return float(step)
            (s0, v0) = previous
            return s0 + (target - v0) / (top1 - v0) * (step - s0)
        previous = (step, top1)
    return None


def _val_curve(trial):
    return [(_num(r.get("iteration")), _num(r.get("val_top1"))) for r in trial.get("evals", [])
            if _finite(r.get("iteration")) and _finite(r.get("val_top1"))]


def _decided(trial):
    """Whether a trial's outcome can no longer change: it finished, or a NaN/inf loss stopped it."""
    return trial["finished"] or trial["diverged_epoch"] is not None or trial["params"].get("diverged") is True


def target_points(points, target):
    """Every point (setting) with its seeds' steps-to-target: the point dict plus `reached` (steps of the
    seeds that reached it), `n_reached`, `n_val` (seeds counted), `n_running` (seeds still running, or stopped
    early, that have not reached the target: not counted yet), mean / median / min / max of the steps,
    `final_val` (mean final validation top-1 of the seeds that ended), `all_reached`, and `rank` (on the first
    seed; see below; None while that seed is not counted). Points without validation rows are left out."""
    out = []
    for p in points:
        seeds = [(t, c, steps_to_target(c, target)) for t, c in ((t, _val_curve(t)) for t in p["trials"]) if c]
        if not seeds:
            continue
        # a seed counts once it reached the target (its first crossing cannot change) or once it ended
        counted = [(t, c, s) for t, c, s in seeds if s is not None or _decided(t)]
        reached = [s for _, _, s in counted if s is not None]
        finals = [c[-1][1] for t, c, _ in counted if _decided(t)]
        ordered = sorted(reached)
        half = len(ordered) // 2
        # the setting's rank, on its first seed (the seed a grid is tuned on; later seeds only report it):
        # fewer steps to the target first; then, or when the target is not reached, higher final val top-1
        tuning = seeds[0]
        rank = None
        if tuning[2] is not None:
            rank = (0, tuning[2], -tuning[1][-1][1])
        elif _decided(tuning[0]):
            rank = (1, 0.0, -tuning[1][-1][1])
        out.append(dict(p, rank=rank, reached=reached, n_reached=len(reached), n_val=len(counted),
                        n_running=len(seeds) - len(counted),
                        all_reached=bool(reached) and len(reached) == len(counted),
                        steps_mean=sum(reached) / len(reached) if reached else None,
                        steps_median=(ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2)
                        if ordered else None,
                        steps_min=ordered[0] if ordered else None, steps_max=ordered[-1] if ordered else None,
                        final_val=sum(finals) / len(finals) if finals else None))
    return out


def best_per_batch(tpoints):
    """{(optimizer, batch size): the best setting}, chosen on each setting's first seed (see `target_points`'s
    rank: fewest steps to the target, then final validation top-1; validation only, never test), among the
    settings whose first seed counts. Its other seeds report it; `fitted` keeps those whose every counted seed
    reached the target."""
    best = {}
    for p in (p for p in tpoints if p["rank"] is not None):
        k = (p["optimizer"], p["batch_size"])
        if k not in best or p["rank"] < best[k]["rank"]:
            best[k] = p
    return best


def fitted(best):
    """The best settings that enter the figure and the B_crit fit: every seed reached the target."""
    return {k: p for k, p in best.items() if p["all_reached"]}


def fit_critical_batch(batch_sizes, steps):
    """(S_min, B_crit) of S(B) = S_min (1 + B_crit / B), least squares on log S: for each B_crit on a fine
    log grid S_min is closed-form, the best B_crit wins. None with fewer than 2 batch sizes. A B_crit at the
    grid's edge (far outside the batch sizes measured) means the data do not bound it."""
    import numpy as np
    if len(batch_sizes) < 2:
        return None
    b, log_s = np.asarray(batch_sizes, dtype=float), np.log(np.asarray(steps, dtype=float))
    grid = np.geomspace(b.min() / 1000, b.max() * 1000, 4001)
    log_terms = np.log1p(grid[:, None] / b[None, :])            # (grid, batch sizes)
    log_s_min = (log_s[None, :] - log_terms).mean(axis=1)
    error = ((log_s[None, :] - log_s_min[:, None] - log_terms) ** 2).sum(axis=1)
    i = int(error.argmin())
    return float(np.exp(log_s_min[i])), float(grid[i])


def bootstrap_critical_batch(seed_steps, resamples=BOOTSTRAP_RESAMPLES, seed=0):
    """90% interval (5th, 95th percentile) of B_crit over resamples of the seeds at each batch size (with
    replacement; the fit on the resampled means). `seed_steps`: {batch size: [steps of each seed]}. None with
    one seed at every batch size: resampling cannot vary anything, and a zero-width interval would say otherwise."""
    if all(len(steps) < 2 for steps in seed_steps.values()):
        return None
    import random
    rng = random.Random(seed)
    sizes = sorted(seed_steps)
    fits = []
    for _ in range(resamples):
        means = []
        for b in sizes:
            draw = [rng.choice(seed_steps[b]) for _ in seed_steps[b]]
            means.append(sum(draw) / len(draw))
        fit = fit_critical_batch(sizes, means)
        if fit:
            fits.append(fit[1])
    if not fits:
        return None
    fits.sort()
    return fits[int(0.05 * (len(fits) - 1))], fits[int(round(0.95 * (len(fits) - 1)))]


def critical_batch_fits(best):
    """{optimizer: (S_min, B_crit, (low, high) or None, batch sizes fitted)} from the best settings."""
    out = {}
    for optimizer in sorted({o for o, _ in best}):
        ps = sorted((p for (o, _), p in best.items() if o == optimizer), key=lambda p: p["batch_size"])
        fit = fit_critical_batch([p["batch_size"] for p in ps], [p["steps_mean"] for p in ps])
        if fit:
            interval = bootstrap_critical_batch({p["batch_size"]: p["reached"] for p in ps})
            out[optimizer] = (fit[0], fit[1], interval, [p["batch_size"] for p in ps])
    return out


def _compact(value):
    return f"{value:.0f}" if value is not None else "—"


def _schedule_steps(point):
    """The optimizer steps of a setting's whole schedule (`total_steps` in its parameter files), or None."""
    steps = [t["params"].get("total_steps") for t in point["trials"]]
    return max((s for s in steps if isinstance(s, (int, float))), default=None)


def _never_reached(p):
    """Whether no seed of a setting reached the target and none is still running (its schedule bounds its steps)."""
    return p["n_reached"] == 0 and p["n_val"] > 0 and not p["n_running"]


def _seed_bounds(p):
    """[(low, high)] of each counted seed's steps-to-target: (s, s) where it reached the target, (just above the
    schedule's steps, inf) where it ended without: it would have needed more. None while a seed is running or
    when a seed missed the target and no schedule length is logged: then no bound holds yet."""
    schedule = _schedule_steps(p)
    missed = p["n_val"] - p["n_reached"]
    if p["n_running"] or not p["n_val"] or (missed and not schedule):
        return None
    return [(s, s) for s in p["reached"]] + [(math.nextafter(schedule, math.inf), math.inf)] * missed


def _mean_bound(p):
    """A best setting some of whose seeds missed the target: the mean with those at their schedule's steps, a
    lower bound of the mean steps-to-target (None otherwise)."""
    if p["all_reached"] or not _seed_bounds(p):
        return None
    return (sum(p["reached"]) + (p["n_val"] - p["n_reached"]) * _schedule_steps(p)) / p["n_val"]


def _bounded_ratio(low, high, digits=2):
    """A ratio known to lie in [low, high]: its value, a bound ('> x', '< x'), or '?' when nothing bounds it."""
    if low == high:
        return f"{low:.{digits}f}"
    if high == math.inf and low > 0:
        return f"> {low:.{digits}f}"
    if low == 0 and high < math.inf:
        return f"< {high:.{digits}f}"
    return "?"


def _steps_cell(p):
    """A best setting's steps-to-target in the ratio table: mean (min–max), or the bound its seeds give."""
    if p["all_reached"]:
        return f"{p['steps_mean']:.0f}" + (f" ({p['steps_min']:.0f}–{p['steps_max']:.0f})" if p["n_reached"] > 1
                                            else "")
    if _never_reached(p) and _schedule_steps(p):
        return f"> {_compact(_schedule_steps(p))} (not reached)"
    if _mean_bound(p) is not None:
        missed = p["n_val"] - p["n_reached"]
        spread = f"{p['steps_min']:.0f}–{p['steps_max']:.0f}" if p["n_reached"] > 1 else f"{p['steps_min']:.0f}"
        return f"> {_mean_bound(p):.0f} ({spread}; {missed} of {p['n_val']} > {_compact(_schedule_steps(p))})"
    return f"{p['n_reached']}/{p['n_val']} reached" + (f", {p['n_running']} running" if p["n_running"] else "")


def ratio_lines(best):
    """Markdown: at each batch size, the ratio of two optimizers' steps-to-target at their best settings (the
    later name over the earlier one, e.g. S_SGD / S_LARS), with the range over the pairs of seeds, and whether
    the seeds' ranges overlap. A seed that missed the target needed more steps than its schedule had: the
    ratios it enters become bounds, and the ranges are apart only when that holds whatever it needed."""
    optimizers = sorted({o for o, _ in best})
    pairs = [(a, b) for i, a in enumerate(optimizers) for b in optimizers[i + 1:]]
    rows = []
    for a, b in pairs:
        for batch in sorted({size for o, size in best if o == a} & {size for o, size in best if o == b}):
            pa, pb = best[(a, batch)], best[(b, batch)]
            ratio = spread = apart = "—"
            sa, sb = _seed_bounds(pa), _seed_bounds(pb)
            if sa and sb:
                (mean_a_lo, mean_a_hi), (mean_b_lo, mean_b_hi) = ((sum(lo for lo, _ in s) / len(s),
                                                                   sum(hi for _, hi in s) / len(s)) for s in (sa, sb))
                ratio = _bounded_ratio(mean_b_lo / mean_a_hi, mean_b_hi / mean_a_lo)
                # the range's ends: (lowest, highest) of each side, each known within (low, high)
                lo_a = (min(lo for lo, _ in sa), min(hi for _, hi in sa))
                lo_b = (min(lo for lo, _ in sb), min(hi for _, hi in sb))
                hi_a = (max(lo for lo, _ in sa), max(hi for _, hi in sa))
                hi_b = (max(lo for lo, _ in sb), max(hi for _, hi in sb))
                if len(sa) > 1 or len(sb) > 1:
                    ends = (_bounded_ratio(lo_b[0] / hi_a[1], lo_b[1] / hi_a[0]),
                            _bounded_ratio(hi_b[0] / lo_a[1], hi_b[1] / lo_a[0]))
                    exact = all(e[0].isdigit() for e in ends)
                    spread = "–".join(ends) if exact else " to ".join(ends)
                if lo_a[0] > hi_b[1] or lo_b[0] > hi_a[1]:
                    apart = "apart"
                elif lo_a[1] <= hi_b[0] and lo_b[1] <= hi_a[0]:
                    apart = "overlap"
                else:
                    apart = "may overlap"
                apart += f" ({pa['n_val']} and {pb['n_val']} seeds)"
            rows.append(f"| {batch} | {b} / {a} | {_steps_cell(pa)} | {_steps_cell(pb)} | {ratio} | {spread} | "
                        f"{apart} |")
    if not rows:
        return []
    return ["", "## Steps ratio between the optimizers at each batch size's best setting", "",
            "Steps-to-target: mean (min–max over the seeds that reached it). Ratio of the means; range: the "
            "smallest and largest ratio over pairs of seeds; 'apart' when the two seeds' ranges do not overlap. "
            "A seed that never reached the target within its schedule needed more steps than the schedule had "
            "('> N'): the mean and the ratios it enters are then bounds, and 'apart' holds whatever it needed "
            "('may overlap': its bound cannot tell). No bound while a seed still runs.", "",
            "| batch size | B / A | steps A | steps B | ratio of means | range | seeds' ranges |",
            "| ---: | --- | ---: | ---: | ---: | ---: | --- |", *rows]


def steps_to_target_table(tpoints, target):
    """(markdown text, CSV text): every setting's steps-to-target and the fits."""
    import csv
    import io
    best = best_per_batch(tpoints)
    fits = critical_batch_fits(fitted(best))
    chosen = {id(p) for p in best.values()}
    columns = ["optimizer", "batch_size", "experiment", "setting", "seeds", "schedule_steps", "reached", "steps_mean",
               "steps_median", "steps_min", "steps_max", "final_val_top1", "best"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    lines = [f"# Steps to {target:g}% validation top-1", "",
             f"One row per setting; {STEPS_NOTE}. Mean, median and range over the seeds that reached the "
             f"target; 'not reached' counts the others that ended; 'running' counts seeds still running (or "
             f"stopped early) that have not reached it yet: they are not counted. Best (bold) per optimizer and "
             f"batch size: chosen on each setting's first seed (the seed a grid is tuned on): fewest steps to the target, then (ties, or "
             f"no setting reaching it) highest final validation top-1; validation only, never test. Its other "
             f"seeds report it. The figure and the B_crit fit use the best settings whose every seed reached "
             f"the target. Schedule: the optimizer steps of the setting's whole schedule (its horizon).", "",
             "| optimizer | batch size | experiment | setting | seeds | schedule (steps) | reached | steps mean | "
             "median | min–max | final val top-1 (%) |",
             "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in sorted(tpoints, key=lambda p: (p["optimizer"], p["batch_size"] or 0, p["experiment"],
                                             tuple(_order(setting_value(p, k)) for k, _ in p["setting"]))):
        is_best = id(p) in chosen
        reached = f"{p['n_reached']}/{p['n_val']}" + ("" if p["all_reached"] or not p["n_val"] else
                                                       f" ({p['n_val'] - p['n_reached']} not reached)") + (
            f" ({p['n_running']} running)" if p["n_running"] else "")
        mean = _compact(p["steps_mean"]) if p["n_reached"] else "not reached" if p["n_val"] else "running"
        cells = [p["optimizer"], p["batch_size"], p["experiment"], p["setting_label"] or "—", p["n"],
                 _compact(_schedule_steps(p)), reached,
                 f"**{mean}**" if is_best else mean, _compact(p["steps_median"]),
                 f"{_compact(p['steps_min'])}–{_compact(p['steps_max'])}" if p["n_reached"] > 1 else "—",
                 f"{p['final_val']:.2f}" if p["final_val"] is not None else "—"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        writer.writerow([p["optimizer"], p["batch_size"], p["experiment"], p["setting_label"], p["n"],
                         _schedule_steps(p) or "", p["n_reached"], *(("" if v is None else f"{v:.6g}") for v in (
                             p["steps_mean"], p["steps_median"], p["steps_min"], p["steps_max"], p["final_val"])),
                         "yes" if is_best else ""])
    lines += ["", "## Final test top-1 at each batch size's best setting", "",
              "The setting chosen above on validation; the test top-1 after each finished trial's last epoch "
              "(unfinished trials left out). Mean ± half-range over the seeds, n seeds.", "",
              "| optimizer | batch size | setting | test top-1 (%) | n |", "| --- | ---: | --- | ---: | ---: |"]
    for (optimizer, batch), p in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        finals = [t["final_top1"] for t in p["trials"] if t["finished"] and t["final_top1"] is not None]
        test = "—" if not finals else f"{sum(finals) / len(finals):.2f}" + (
            f" ± {(max(finals) - min(finals)) / 2:.2f}" if len(finals) > 1 else "")
        lines.append(f"| {optimizer} | {batch} | {p['setting_label'] or '—'} | {test} | {len(finals)} |")
    lines += ratio_lines(best)
    lines += ["", "Critical batch size: S(B) = S_min (1 + B_crit / B) fitted to the best settings' mean steps "
              "(least squares on log S); 90% interval from "
              f"{BOOTSTRAP_RESAMPLES} bootstrap resamples of the seeds at each batch size.", ""]
    for optimizer, (s_min, b_crit, interval, sizes) in fits.items():
        span = f"{interval[0]:.0f}–{interval[1]:.0f}" if interval else "—"
        lines.append(f"- {optimizer}: B_crit = {b_crit:.0f} (90% interval {span}), S_min = {s_min:.0f} steps, "
                     f"from batch sizes {', '.join(map(str, sizes))}")
    if not fits:
        lines.append("- no fit: fewer than two batch sizes reached the target")
    return "\n".join(lines) + "\n", buffer.getvalue()


def fig_steps_to_target(tpoints, target, command, note):
    chosen = best_per_batch(tpoints)
    best = fitted(chosen)
    fits = critical_batch_fits(best)
    # a best setting some or all of whose seeds missed the target: drawn as a lower bound of its mean steps
    bounds = {k: _mean_bound(p) for k, p in chosen.items() if _mean_bound(p) is not None}
    optimizers = sorted({o for o, _ in best} | {o for o, _ in bounds})
    colours = recipe_colours(optimizers)
    footer = [f"Each optimizer at each batch size's best setting (chosen on its first seed: fewest steps, then "
              f"final validation top-1). Points: mean over the seeds, bars: {SPREAD}, n beside each point (n=1: a single seed, "
              f"hollow). Dashed: perfect scaling (steps halve as the batch doubles) from the smallest batch. "
              f"Dotted: the fit S(B) = S_min (1 + B_crit/B). Triangle: some or all seeds of the best setting did "
              f"not reach the target within their schedule; it marks the mean with those seeds at the schedule's "
              f"steps, a lower bound, left out of the fit (steps_to_target.md lists the seeds). "
              f"{STEPS_NOTE.capitalize()}."]
    fig, ax = _figure(WIDE, 3.0, _footer(footer, command, note))
    import numpy as np
    for optimizer in optimizers:
        ps = sorted((p for (o, _), p in best.items() if o == optimizer), key=lambda p: p["batch_size"])
        colour = colours[optimizer]
        mine = sorted((batch, steps) for (o, batch), steps in bounds.items() if o == optimizer)
        for i, (batch, steps) in enumerate(mine):
            p = chosen[(optimizer, batch)]
            ax.plot([batch], [steps], "^", color=colour, markersize=5, markerfacecolor="white", zorder=4,
                    label=f"{optimizer}: not reached by every seed (lower bound)" if i == 0 else None)
            text = (f"not reached in {_schedule_steps(p):.0f}" if not p["n_reached"] else
                    f"{p['n_reached']}/{p['n_val']} reached in {_schedule_steps(p):.0f}: mean > {steps:.0f}")
            ax.annotate(text, (batch, steps), xytext=(4, 3), textcoords="offset points", fontsize=5.5,
                        color=colour)
        if not ps:
            continue
        xs, ys = [p["batch_size"] for p in ps], [p["steps_mean"] for p in ps]
        ax.plot(xs, ys, "-", color=colour, linewidth=1.4, zorder=3, label=optimizer)
        ax.errorbar(xs, ys, yerr=[[y - p["steps_min"] for y, p in zip(ys, ps)],
                                  [p["steps_max"] - y for y, p in zip(ys, ps)]],
                    fmt="none", ecolor=colour, elinewidth=1, capsize=2.5, zorder=3)
        for x, y, p in zip(xs, ys, ps):
            ax.plot([x], [y], "o", color=colour, markersize=4, zorder=4,
                    markerfacecolor="white" if p["n_reached"] == 1 else colour)
            ax.annotate(f"n={p['n_reached']}", (x, y), xytext=(3, 3), textcoords="offset points", fontsize=5.5,
                        color=colour)
        line = np.geomspace(xs[0], xs[-1] if len(xs) > 1 else xs[0] * 2, 50)
        ax.plot(line, ys[0] * xs[0] / line, "--", color=colour, linewidth=0.8, alpha=0.7,
                label=f"{optimizer}: perfect scaling")
        if optimizer in fits:
            s_min, b_crit, interval, _ = fits[optimizer]
            span = f", 90% {interval[0]:.0f}–{interval[1]:.0f}" if interval else ""
            ax.plot(line, s_min * (1 + b_crit / line), ":", color=colour, linewidth=1.2,
                    label=f"{optimizer}: fit, B_crit {b_crit:.0f}{span}")
    sizes = sorted({b for _, b in best} | {b for _, b in bounds})
    if sizes:
        _batch_ticks(ax, sizes)
        ax.set_xlim(sizes[0] / 1.4, sizes[-1] * 1.4)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("batch size (log scale)")
    ax.set_ylabel(f"steps to {target:g}% validation top-1 (log scale)")
    ax.grid(True, which="both", alpha=0.25, linewidth=0.5)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False)
    _fit_title(fig, f"Optimizer steps to {target:g}% validation top-1 vs batch size")
    return fig


NOISE_TABLE = "noise_scale.md"
NOISE_NOTE = ("B_simple = tr(Sigma) / |G|^2, the gradient noise scale of McCandlish et al. (2018), estimated from "
              "the micro-batches of each step (EMAs, --noise_scale) and logged every --log_interval steps")


def _noise_curve(trial):
    return [(_num(r.get("iteration")), _num(r.get("noise_scale"))) for r in trial.get("noise", [])
            if _finite(r.get("iteration")) and _finite(r.get("noise_scale"))]


def noise_at(curve, step):
    """B_simple at `step`: linearly interpolated between the logged steps around it; None outside them."""
    for (s0, v0), (s1, v1) in zip(curve, curve[1:]):
        if s0 <= step <= s1:
            return v0 if s1 == s0 else v0 + (step - s0) / (s1 - s0) * (v1 - v0)
    return curve[0][1] if curve and curve[0][0] == step else None


def _noise_best(best, target):
    """[(optimizer, batch size, point, [(trial, curve, steps to target)])] for the best settings with noise rows."""
    out = []
    for (optimizer, batch), p in sorted(best.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        seeds = [(t, _noise_curve(t), steps_to_target(_val_curve(t), target)) for t in p["trials"]]
        seeds = [s for s in seeds if s[1]]
        if seeds:
            out.append((optimizer, batch, p, seeds))
    return out


def _mean_range(values):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    mean = sum(values) / len(values)
    return f"{mean:.0f}" + (f" ({min(values):.0f}–{max(values):.0f})" if len(values) > 1 else "")


def noise_table(rows, fits, target):
    lines = [f"# Gradient noise scale at each batch size's best setting (target {target:g}% validation top-1)", "",
             f"{NOISE_NOTE}. 'At the target': B_simple interpolated at the step where the seed first reaches the "
             f"target; 'end': at the last logged step. Mean over seeds (min–max when more than one). McCandlish "
             f"et al. predict the critical batch size B_crit to be about B_simple at the target.", "",
             "| optimizer | batch size | setting | seeds | B_simple at the target | B_simple at the end | "
             "B_crit (90% interval) |", "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for optimizer, batch, p, seeds in rows:
        fit = fits.get(optimizer)
        crit = (f"{fit[1]:.0f} ({fit[2][0]:.0f}–{fit[2][1]:.0f})" if fit[2] else f"{fit[1]:.0f}") if fit else "—"
        at_target = [noise_at(curve, reached) for _, curve, reached in seeds if reached is not None]
        lines.append(f"| {optimizer} | {batch} | {p['setting_label'] or '—'} | {len(seeds)} | "
                     f"{_mean_range(at_target)} | {_mean_range([curve[-1][1] for _, curve, _ in seeds])} | {crit} |")
    return "\n".join(lines) + "\n"


def fig_noise_scale(rows, fits, target, command, note):
    optimizers = sorted({r[0] for r in rows})
    footer = [f"{NOISE_NOTE}; its first steps, before the EMAs settle, and non-positive estimates are not drawn. "
              f"One line per seed of each batch size's best setting (by steps to {target:g}% validation top-1), "
              f"against the fraction of its optimizer steps; a dot where the seed reached the target. Dotted: the "
              f"optimizer's fitted critical batch size B_crit, shaded: its 90% bootstrap interval."]
    fig, axes = _figure(WIDE, 2.6, _footer(footer, command, note), ncols=len(optimizers), squeeze=False,
                        sharey=True)
    for ax, optimizer in zip(axes.flat, optimizers):
        mine = [r for r in rows if r[0] == optimizer]
        sizes = [r[1] for r in mine]
        cmap = plt.get_cmap("viridis")
        for i, (_, batch, p, seeds) in enumerate(mine):
            colour = cmap(0.85 * i / max(1, len(sizes) - 1))
            for k, (t, curve, reached) in enumerate(seeds):
                total = max(s for s, _ in curve)
                drawn = [(s / total, v) for s, v in curve if v > 0 and s > 0.1 * total]
                if drawn:
                    ax.plot(*zip(*drawn), color=colour, linewidth=0.9, label=f"batch {batch}" if k == 0 else None)
                value = noise_at(curve, reached) if reached is not None else None
                if value is not None and value > 0:
                    ax.plot([reached / total], [value], "o", color=colour, markersize=3.5, zorder=4)
        if optimizer in fits:
            _, b_crit, interval, _ = fits[optimizer]
            ax.axhline(b_crit, color="black", linestyle=":", linewidth=1.1, label=f"B_crit {b_crit:.0f}")
            if interval:
                ax.axhspan(interval[0], interval[1], color="black", alpha=0.08, linewidth=0)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        # a span of a decade or two: label the minor ticks at 2 and 5 times a power of ten, not all eight
        ax.yaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v)), 6) in (2, 5) else ""))
        ax.set_xlabel("fraction of the trial's optimizer steps")
        ax.set_ylabel("B_simple (log scale)")
        ax.grid(True, which="both", alpha=0.2, linewidth=0.5)
        ax.set_title(optimizer, fontsize=7)
        ax.legend(fontsize=6, frameon=False)
    _fit_title(fig, "Gradient noise scale over training, and the critical batch size")
    return fig


# ================================================================ table

def results_table(trials, title=None):
    points = group_points([t if "recipe" in t else summarize(t) for t in trials])
    scale_text, seed_scale = scale_description([t for p in points for t in p["trials"]])
    columns = ["experiment", "optimizer", "batch size", "setting", "seeds", "final top-1 (%)", "min-max (%)",
               "steps", "epochs", "wall time per seed (min)", "seed's LARS top-1 (%) power 2 / 1", "notes"]
    lines = [f"# {title or 'Results'}: {scale_text}", "",
             "One row per experiment, batch size and setting (the recipe keys that vary among the trials of one "
             "batch size). Final top-1 = test top-1 after the last completed epoch, mean over seeds; min-max = "
             "its range over seeds; steps = optimizer steps done; wall time = sum of the logged epoch times "
             "(training + evaluation), mean per seed, in minutes. Seed = the seed's published LARS numbers for "
             "the same batch size (poly power 2 / power 1; ResNet18, CIFAR-10, 200 epochs)"
             + (", for reference only." if seed_scale else
                f"; these trials are at a different scale ({scale_text}): not directly comparable."),
             "Notes: partial = trials not finished (still running or stopped early); diverged = NaN/inf loss; "
             "test subset = test accuracy measured on a subset of the test set.", "",
             "| " + " | ".join(columns) + " |",
             "| " + " | ".join("---" if c in ("experiment", "optimizer", "setting", "notes") else "---:"
                               for c in columns) + " |"]
    for p in points:
        ts = p["trials"]
        done = sorted({t["epochs_done"] for t in ts})
        planned = sorted({_fmt(t["epochs_planned"]) for t in ts})
        steps = [t["steps"] for t in ts if t["steps"] is not None]
        notes = []
        if p["partial"]:
            notes.append(f"partial: {len(p['partial'])} of {p['n']} seeds at "
                         + ", ".join(f"{t['epochs_done']}/{_fmt(t['epochs_planned'])}" for t in p["partial"])
                         + " epochs")
        if p["diverged"]:
            notes.append(f"diverged: {len(p['diverged'])} of {p['n']} seeds (epoch "
                         + ", ".join(str(t["diverged_epoch"]) for t in p["diverged"]) + ")")
        if p["test_subset"]:
            notes.append(f"test subset: {'/'.join(_fmt(s) for s in p['test_subset'])} images")
        if p["n_final"] < p["n"]:
            notes.append(f"{p['n'] - p['n_final']} seed(s) without a completed epoch")
        b = p["batch_size"]
        seed = f"{SEED_POWER2[b]:.2f} / {SEED_POWER1[b]:.2f}" if b in SEED_POWER2 else "—"
        cells = [p["experiment"], p["optimizer"], b, p["setting_label"] or "—", p["n"],
                 f"{p['mean']:.2f}" if p["mean"] is not None else "—",
                 f"{p['min']:.2f}–{p['max']:.2f}" if p["n_final"] > 1 else "—",
                 str(max(steps)) if steps else "—",
                 (f"{done[0]}–{done[-1]}" if len(done) > 1 else str(done[0])) + "/" + "/".join(planned),
                 f"{sum(t['wall_minutes'] for t in ts) / len(ts):.1f}",
                 seed, "; ".join(notes) or "—"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ================================================================ main

TABLE = "results_table.md"
DPI = 200


def save_figures(figures, folder):
    """Each figure as folder/<stem>.png and .pdf; closes them. Returns the file names."""
    names = []
    for stem, fig in figures.items():
        for ext in ("png", "pdf"):
            fig.savefig(os.path.join(folder, f"{stem}.{ext}"), dpi=DPI)
            names.append(f"{stem}.{ext}")
        plt.close(fig)
    return names


STEPS_TABLE, STEPS_CSV = "steps_to_target.md", "steps_to_target.csv"


def target_outputs(trials, target, command=None, note=None):
    """({"steps_to_target": Figure, and "noise_scale" when the best settings' trials logged it}, {file name:
    text}) for --target, or a ResultsError when no trial has validation rows."""
    points = group_points([t if "recipe" in t else summarize(t) for t in trials])
    tpoints = target_points(points, target)
    if not tpoints:
        raise ResultsError("--target: no trial has validation rows (train with --val_size, and --eval_every for "
                           "more than one evaluation an epoch)")
    markdown, csv_text = steps_to_target_table(tpoints, target)
    figures, texts = {}, {STEPS_TABLE: markdown, STEPS_CSV: csv_text}
    best = best_per_batch(tpoints)
    noise_rows = _noise_best(best, target)
    with plt.rc_context(FONT):
        figures["steps_to_target"] = fig_steps_to_target(tpoints, target, command, note)
        if noise_rows:
            fits = critical_batch_fits(fitted(best))
            figures["noise_scale"] = fig_noise_scale(noise_rows, fits, target, command, note)
            texts[NOISE_TABLE] = noise_table(noise_rows, fits, target)
    return figures, texts


def write_all(trials, out_dir, command=None, note=None, title=None, target=None):
    """Every output into a temporary folder first, then moved into `out_dir` (nothing half-written)."""
    texts = {}
    figures = {}
    if target is not None:
        figures, texts = target_outputs(trials, target, command, note)
    try:
        figures.update(build_figures(trials, command, note, target))  # may raise ResultsError: before anything is written
    except BaseException:
        for fig in figures.values():
            plt.close(fig)
        raise
    texts[TABLE] = results_table(trials, title)
    pairs = trust_trials(group_points([t if "recipe" in t else summarize(t) for t in trials]), target)
    if pairs:
        texts[TRUST_TABLE] = trust_table(pairs)
    try:
        os.makedirs(out_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".plot_results-", dir=out_dir)
    except OSError as e:
        for fig in figures.values():
            plt.close(fig)
        raise ResultsError(f"{out_dir}: cannot write the outputs here ({e.strerror or e})") from None
    try:
        names = save_figures(figures, tmp)
        for name, text in texts.items():
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
            names.append(name)
        for name in names:
            os.replace(os.path.join(tmp, name), os.path.join(out_dir, name))
    finally:
        for fig in figures.values():
            plt.close(fig)
        shutil.rmtree(tmp, ignore_errors=True)
    return [os.path.join(out_dir, name) for name in names]


def _command(experiments, out):
    """The shortest faithful command line: experiments under one parent as parent/{a,b}."""
    parents = {os.path.dirname(os.path.normpath(e)) for e in experiments}
    if len(experiments) > 1 and len(parents) == 1:
        parent = parents.pop()
        names = ",".join(os.path.basename(os.path.normpath(e)) for e in experiments)
        exps = (parent + "/" if parent else "") + "{" + names + "}"
    else:
        exps = " ".join(experiments)
    return f"python plot_results.py {exps} --out {out}"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="plot_results.py", description=__doc__.split("\n\n")[0],
        epilog="Outputs: accuracy_vs_batch, test_accuracy_curves, train_loss, setting_<key>, trust_ratios (with "
               "--log_trust_ratios trials), steps_to_target (with --target) as .png and .pdf; results_table.md, "
               "trust_ratios.md, steps_to_target.md/.csv.")
    parser.add_argument("experiments", nargs="+", help="experiment folders: LOGROOT/EXPERIMENT")
    parser.add_argument("--out", default="plots",
                        help="output folder (default: ./plots; give --out images/... for the repository's figures)")
    parser.add_argument("--note", default=None,
                        help="an extra footer line on every figure, e.g. the hardware: '2-core CPU, 2026-11'")
    parser.add_argument("--title", default=None, help="the results table's title (default: Results)")
    parser.add_argument("--target", type=float, default=None, metavar="T",
                        help="validation top-1 (%%, 0-100) to reach: also writes steps_to_target.png/.pdf (steps "
                             "against batch size, log-log, each optimizer at each batch size's best setting, "
                             "perfect scaling, the fit S(B) = S_min (1 + B_crit/B) with a bootstrap interval), "
                             "steps_to_target.md and .csv, and for trials run with --noise_scale noise_scale.png/"
                             ".pdf/.md (B_simple over training beside B_crit); needs trials run with --val_size "
                             "(default: none)")
    args = parser.parse_args(argv)
    if args.target is not None and not 0 <= args.target <= 100:
        parser.exit(2, f"plot_results.py: error: --target: expected a validation top-1 between 0 and 100 (%), "
                       f"got {args.target:g}\n")
    try:
        trials = read_all(args.experiments)
        command = _command(args.experiments, args.out) + (f" --target {args.target:g}" if args.target is not None
                                                          else "")
        written = write_all(trials, args.out, command, args.note, args.title, args.target)
    except ResultsError as e:
        parser.exit(2, f"plot_results.py: error: {' '.join(str(e).split())}\n")
    print(f"{len(trials)} trial(s) from {len(args.experiments)} experiment(s); wrote " + ", ".join(written))
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
