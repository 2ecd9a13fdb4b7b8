"""Train a CIFAR ResNet with LARS or SGD at any effective batch size.

    python train.py --optimizer LARS --cuda lars_results            # one trial (the seed's flags)
    torchrun --nproc_per_node 4 train.py --cuda lars_results        # the same on 4 GPUs
    python train.py --config configs/seed_table.yaml seed_table     # a grid of trials (sweep.py)

Results go to LOGROOT/EXPERIMENTNAME/ (store.py says what is where); `python plot_results.py
LOGROOT/EXPERIMENTNAME` draws them. Bad input is one `train.py: error:` line and exit status 2; a failed run
(data, disk, memory, checkpoint, divergence) is one such line and exit status 1; Ctrl-C or SIGTERM is one
`train.py: stopped` line (where, and the command that continues) and exit status 130 or 143.
"""
import shlex
import signal
import sys

import config
import interrupts


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = config.make_parser(__doc__)
    args = parser.parse_args(argv)
    try:
        with interrupts.stop_on_signals():
            _run(parser, args, argv)
    except KeyboardInterrupt as e:  # interrupts.Stopped, or a KeyboardInterrupt raised without its handler
        signum = getattr(e, "signum", signal.SIGINT)
        where = getattr(e, "where", "") or ("the sweep, outside its trials; finished trials are kept" if args.config
                                            else "before the trial started; nothing written")
        command = shlex.join(["python", "train.py", *argv])
        if args.config:
            again = f"run the same command to continue the sweep: {command}"
        elif getattr(e, "kept", False):
            again = f"continue with: {command}" + ("" if args.resume else " --resume")
        else:
            again = f"start again with: {command}"
        parser.exit(128 + signum, f"train.py: stopped by {signal.Signals(signum).name}: {where}; {again}\n")


def _run(parser, args, argv):
    # Imported after parsing, so that --help and flag errors do not wait for the training stack.
    import data
    import store
    import sweep
    import trainer

    try:
        recipe, runtime = config.from_namespace(args)
        config.check_command(runtime)
        if runtime.config:
            sweep.run(runtime.config, recipe, runtime, config.given_flags(argv))
        else:
            trainer.run_trial(recipe, runtime)
    except config.UsageError as e:
        parser.exit(2, f"train.py: error: {e}\n")
    except (data.DataError, store.StoreError, trainer.Diverged, trainer.OutOfMemory, sweep.SweepFailed) as e:
        parser.exit(1, f"train.py: error: {e}\n")


if __name__ == "__main__":
    main()
