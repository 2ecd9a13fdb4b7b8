"""Figures and the results table from logged trials (complete or still running).

    python plot_results.py logs/seed_table logs/sgd_baseline --out images/

Each argument is an experiment folder (LOGROOT/EXPERIMENT). Writes into --out:
  lars_test_curves.png/.pdf   test top-1 against epoch, one line per trial
  train_loss_curves.png       per-epoch training loss against epoch
  accuracy_vs_batch_size.png  final and best test top-1 against batch size, beside the seed's published table
  results_table.md            one row per trial, with the seed's number for the same batch size

"Final" is the evaluation after the last completed epoch; "best" the highest test top-1 over completed
epochs. A trial that is still running or stopped early (`finished` false in its param map) is marked
"partial" in the table and drawn dashed. The rows are read with skeletor's reader (tracking.read_results);
a trial it cannot read (no result file yet, ids it cannot match) is read from track's files directly.
Nothing is written unless every folder reads cleanly.
"""
import argparse
import json
import math
import os
import shutil
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The seed's published table: ResNet18 on CIFAR-10, LARS, 200 epochs, test top-1 (%) by batch size.
SEED_LARS = {64: 89.39, 256: 85.45, 1024: 81.2, 4096: 73.41, 16384: 64.13}
# The seed's text: SGD with momentum at batch 128 reached about this.
SEED_SGD = (128, 93.5)
OUTPUTS = ("lars_test_curves.png", "lars_test_curves.pdf", "train_loss_curves.png", "accuracy_vs_batch_size.png",
           "results_table.md")
FIGSIZE, DPI = (7, 4.5), 150


class ResultsError(Exception):
    """Results that cannot be read; the message starts with the offending path."""


# ---------------------------------------------------------------- reading

def _read_json_lines(path):
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ResultsError(f"{path}: line {number} is not valid JSON ({e}); the file is corrupt "
                                   f"or cut short") from None
            if not isinstance(row, dict):
                raise ResultsError(f"{path}: line {number} is not a JSON object")
            rows.append(row)
    return rows


def _epoch_rows(rows):
    """The per-epoch rows, one per epoch (the last logged wins), in epoch order."""
    by_epoch = {}
    for row in rows:
        if row.get("kind") == "epoch" and row.get("epoch") is not None:
            by_epoch[int(row["epoch"])] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_experiment(path):
    """[trial dict] for one experiment folder: params, epoch rows and summary numbers."""
    import track.constants as tc

    if not os.path.isdir(path):
        raise ResultsError(f"{path}: no such directory")
    folder = os.path.join(path, tc.METADATA_FOLDER)
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    param_files = [n for n in names if n.endswith(tc.CONFIG_SUFFIX)]
    if not param_files:
        raise ResultsError(f"{path}: no trials here (no {tc.METADATA_FOLDER}/*_{tc.CONFIG_SUFFIX}); "
                           f"give an experiment folder LOGROOT/EXPERIMENT")
    trials = []
    for name in param_files:
        param_path = os.path.join(folder, name)
        try:
            with open(param_path) as f:
                params = json.load(f)
        except (OSError, ValueError) as e:
            raise ResultsError(f"{param_path}: not a readable trial parameter file ({e})") from None
        if not isinstance(params, dict) or "trial_id" not in params:
            raise ResultsError(f"{param_path}: not a trial parameter file (no trial_id)")
        result_path = os.path.join(folder, f"{params['trial_id']}_{tc.RESULT_SUFFIX}")
        direct = _read_json_lines(result_path) if os.path.exists(result_path) else []  # validates every line
        trials.append({"params": params, "result_path": result_path, "direct_rows": direct})

    rows_by_id = {}
    if all(t["direct_rows"] for t in trials):  # skeletor's reader needs every trial's result file
        import tracking
        try:
            df = tracking.read_results(path)
        except Exception as e:  # pandas raises many types
            raise ResultsError(f"{path}: skeletor could not read the results ({type(e).__name__}: "
                               f"{' '.join(str(e).split())})") from None
        for trial_id, group in df.groupby(df["trial_id"].astype(str), sort=False):
            rows_by_id[trial_id] = [{k: v for k, v in row.items() if not _isnan(v)}
                                    for row in group.to_dict("records")]
    experiment = os.path.basename(os.path.normpath(path))
    out = []
    for t in trials:
        params = t["params"]
        rows = rows_by_id.get(str(params["trial_id"]), t["direct_rows"])
        epochs = _epoch_rows(rows)
        planned = params.get("epochs")
        done = int(epochs[-1]["epoch"]) if epochs else 0
        finished = params.get("finished") is True and planned is not None and done >= planned
        out.append({
            "experiment": experiment, "path": path, "trial_id": str(params["trial_id"]),
            "batch_size": params.get("batch_size"), "optimizer": params.get("optimizer", "?"),
            "epochs_planned": planned, "epochs_done": done, "finished": finished,
            "epoch": [int(r["epoch"]) for r in epochs],
            "test_top1": [float(r["test_top1"]) for r in epochs],
            "train_loss": [float(r["train_loss"]) for r in epochs],
            "final_top1": float(epochs[-1]["test_top1"]) if epochs else None,
            "best_top1": max(float(r["test_top1"]) for r in epochs) if epochs else None,
            "wall_seconds": sum(float(r.get("epoch_seconds", 0.0)) for r in epochs),
            "arch": params.get("arch"), "dataset": params.get("dataset"), "params": params,
        })
    if not any(t["epoch"] for t in out):
        raise ResultsError(f"{path}: no results yet (none of its {len(out)} trial(s) has completed an epoch)")
    return out


def _isnan(v):
    return isinstance(v, float) and math.isnan(v)


def read_all(paths):
    trials = []
    for path in paths:
        trials.extend(read_experiment(path))
    if len({t["experiment"] for t in trials}) < len(set(paths)):  # same folder name under two logroots
        for t in trials:
            t["experiment"] = os.path.normpath(t["path"])
    return sorted(trials, key=lambda t: (t["experiment"], t["batch_size"] or 0, t["optimizer"], t["trial_id"]))


# ---------------------------------------------------------------- labels and styles

def seed_number(trial):
    if trial["optimizer"] == "LARS" and trial["batch_size"] in SEED_LARS:
        return f"{SEED_LARS[trial['batch_size']]:.2f}"
    if trial["optimizer"] == "SGD" and trial["batch_size"] == SEED_SGD[0]:
        return f"~{SEED_SGD[1]} (SGD, text)"
    return "—"


# Param-map entries that differ between any two trials without describing what they compute.
BOOKKEEPING = {"trial_id", "start_time", "end_time", "git_repo", "git_hash", "git_pretty", "invocation",
               "max_iteration", "trial_completed", "finished", "resume", "stop_after_epoch"}


def _settings(trials):
    """Per trial, 'flag=value' for the arguments that tell it apart from its experiment's other trials
    of the same optimizer and batch size ('' where there are none)."""
    groups = {}
    for t in trials:
        groups.setdefault((t["experiment"], t["optimizer"], t["batch_size"]), []).append(t)
    settings = {}
    for group in groups.values():
        keys = sorted({k for t in group for k in t["params"] if k not in BOOKKEEPING
                       and len({json.dumps(u["params"].get(k), sort_keys=True) for u in group}) > 1})
        for t in group:
            settings[id(t)] = ", ".join(f"{k}={t['params'].get(k)}" for k in keys)
    return settings


def _labeller(trials):
    several_exps = len({t["experiment"] for t in trials}) > 1
    several_opts = len({t["optimizer"] for t in trials}) > 1
    settings = _settings(trials)

    def label(t):
        text = f"batch {t['batch_size']}"
        if several_opts:
            text += f" {t['optimizer']}"
        if several_exps:
            text += f" [{t['experiment']}]"
        if settings[id(t)]:
            text += f" ({settings[id(t)]})"
        if not t["finished"]:
            text += f" (partial {t['epochs_done']}/{t['epochs_planned']})"
        return text
    return label


def _colour(batch_size, all_sizes):
    sizes = sorted(s for s in all_sizes if s)
    if len(sizes) < 2 or not batch_size:
        return plt.get_cmap("viridis")(0.2)
    lo, hi = math.log2(sizes[0]), math.log2(sizes[-1])
    return plt.get_cmap("viridis")(0.9 * (math.log2(batch_size) - lo) / (hi - lo))


MARKERS = "osD^vP*X"


def _default_title(trials):
    archs = {t["arch"] for t in trials if t["arch"]}
    datasets = {t["dataset"] for t in trials if t["dataset"]}
    name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
    if len(archs) == 1 and len(datasets) == 1:
        return f"{archs.pop()} on {name.get(next(iter(datasets)), next(iter(datasets)))}"
    return "CIFAR ResNets"


# ---------------------------------------------------------------- figures

def _curves(trials, key, ylabel, title, paths):
    label = _labeller(trials)
    sizes = {t["batch_size"] for t in trials}
    exps = sorted({t["experiment"] for t in trials})
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for t in sorted(trials, key=lambda t: (t["batch_size"] or 0, t["optimizer"], t["experiment"], t["trial_id"])):
        if not t["epoch"]:
            continue
        ax.plot(t["epoch"], t[key], label=label(t), color=_colour(t["batch_size"], sizes),
                linestyle="-" if t["finished"] else "--", linewidth=1.6,
                marker=MARKERS[exps.index(t["experiment"]) % len(MARKERS)] if len(exps) > 1 or len(t["epoch"]) < 20 else None,
                markersize=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best", title="dashed: partial" if not all(t["finished"] for t in trials) else None,
              title_fontsize=8)
    fig.tight_layout()
    for path in paths:
        fig.savefig(path, dpi=DPI)
    plt.close(fig)


def _accuracy_vs_batch(trials, title, path):
    fig, ax = plt.subplots(figsize=FIGSIZE)
    series = {}
    for t in trials:
        if t["final_top1"] is not None and t["batch_size"]:
            series.setdefault((t["experiment"], t["optimizer"]), []).append(t)
    several = len(series) > 1
    colours = plt.get_cmap("tab10")
    for n, ((exp, opt), ts) in enumerate(sorted(series.items())):
        ts = sorted(ts, key=lambda t: t["batch_size"])
        xs = [t["batch_size"] for t in ts]
        name = f"{exp} ({opt})" if several else opt
        colour = colours(n % 10)
        ax.plot(xs, [t["final_top1"] for t in ts], "o-", color=colour, label=f"{name}: final")
        ax.plot(xs, [t["best_top1"] for t in ts], "^:", color=colour, label=f"{name}: best")
        for t in ts:
            if not t["finished"]:  # hollow markers for partial trials
                ax.plot([t["batch_size"]], [t["final_top1"]], "o", color=colour, markerfacecolor="white")
                ax.plot([t["batch_size"]], [t["best_top1"]], "^", color=colour, markerfacecolor="white")
    seed_x = sorted(SEED_LARS)
    ax.plot(seed_x, [SEED_LARS[b] for b in seed_x], "s--", color="black", alpha=0.7,
            label="seed's table (LARS, 200 epochs)")
    ax.plot([SEED_SGD[0]], [SEED_SGD[1]], "*", color="black", markersize=11,
            label=f"seed's text: SGD+momentum, batch {SEED_SGD[0]} (~{SEED_SGD[1]})")
    ticks = sorted({t["batch_size"] for t in trials if t["batch_size"]} | set(seed_x) | {SEED_SGD[0]})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(b) for b in ticks], fontsize=8)
    ax.minorticks_off()
    ax.set_xlabel("effective batch size (log scale)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    partial = not all(t["finished"] for t in trials)
    ax.legend(fontsize=7, loc="best", title="hollow markers: partial trials" if partial else None, title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


# ---------------------------------------------------------------- table

def _duration(seconds):
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def table(trials, title):
    settings = _settings(trials)
    with_setting = any(settings.values())  # a "setting" column only where trials need telling apart
    columns = ["experiment", "batch size", "optimizer"] + (["setting"] if with_setting else []) + [
        "final top-1 (%)", "best top-1 (%)", "epochs", "wall time", "seed top-1 (%)"]
    lines = [f"# {title}: results", "",
             "Final = test top-1 after the last completed epoch; best = highest test top-1 over the completed "
             "epochs; wall time = sum of the logged epoch times (training + evaluation). Seed = the seed's "
             "published number for the same batch size (LARS, 200 epochs; SGD from the seed's text), for "
             "comparison only. A partial trial is still running or was stopped early.", "",
             "| " + " | ".join(columns) + " |",
             "| " + " | ".join("---" if c in ("experiment", "optimizer", "setting") else "---:" for c in columns) + " |"]
    for t in trials:
        final = f"{t['final_top1']:.2f}" if t["final_top1"] is not None else "—"
        if not t["finished"]:
            final += f" (partial: {t['epochs_done']}/{t['epochs_planned']} epochs)"
        best = f"{t['best_top1']:.2f}" if t["best_top1"] is not None else "—"
        wall = _duration(t["wall_seconds"]) if t["epoch"] else "—"
        cells = [t["experiment"], t["batch_size"], t["optimizer"]] + ([settings[id(t)] or "—"] if with_setting else [])
        cells += [final, best, f"{t['epochs_done']}/{t['epochs_planned']}", wall, seed_number(t)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main

def write_all(trials, out_dir, title):
    """Every output into a temporary folder first, then moved into `out_dir` (nothing half-written)."""
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".plot_results-", dir=out_dir)
    try:
        p = lambda name: os.path.join(tmp, name)  # noqa: E731
        _curves(trials, "test_top1", "test top-1 (%)", f"{title}: test top-1 by epoch",
                [p("lars_test_curves.png"), p("lars_test_curves.pdf")])
        _curves(trials, "train_loss", "training loss (epoch mean)", f"{title}: training loss by epoch",
                [p("train_loss_curves.png")])
        _accuracy_vs_batch(trials, f"{title}: test top-1 vs batch size", p("accuracy_vs_batch_size.png"))
        with open(p("results_table.md"), "w") as f:
            f.write(table(trials, title))
        for name in OUTPUTS:
            os.replace(p(name), os.path.join(out_dir, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [os.path.join(out_dir, name) for name in OUTPUTS]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="+", help="experiment folders: LOGROOT/EXPERIMENT")
    parser.add_argument("--out", default="images", help="output folder (default images/)")
    parser.add_argument("--title", default=None, help="figure and table title (default: arch on dataset)")
    args = parser.parse_args(argv)
    try:
        trials = read_all(args.experiments)
    except ResultsError as e:
        parser.exit(1, f"plot_results.py: error: {e}\n")
    written = write_all(trials, args.out, args.title or _default_title(trials))
    print(f"{len(trials)} trial(s) from {len(args.experiments)} experiment(s); wrote " + ", ".join(written))
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
