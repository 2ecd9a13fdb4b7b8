"""How long `python train.py --help` takes, against `python -c "import torch"`, measured in the same run.

    python bench/cli_startup.py            # 5 alternating rounds; prints medians and the ratio (target <= 1.2)

train.py imports only config.py before parsing, so --help and flag errors do not wait for torch, skeletor
(~20 s: it pulls in ray and torchvision) or the training stack.
"""
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = {"import torch": [sys.executable, "-c", "import torch"],
            "train.py --help": [sys.executable, "train.py", "--help"]}


def seconds(command):
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main(rounds=5):
    times = {name: [] for name in COMMANDS}
    for _ in range(rounds):  # alternate, so that a change in the machine's load hits both
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, median in medians.items():
        print(f"{name:>16}: median {median:.3f} s over {rounds} runs (min {min(times[name]):.3f} s)")
    print(f"ratio train.py --help / import torch: {medians['train.py --help'] / medians['import torch']:.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
