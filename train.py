"""Train a CIFAR ResNet with LARS or SGD at any effective batch size.

    python train.py --optimizer LARS --cuda lars_results            # one trial (the seed's flags)
    torchrun --nproc_per_node 4 train.py --cuda lars_results        # the same on 4 GPUs
    python train.py --config configs/seed_table.yaml seed_table     # a grid of trials (sweep.py)

Results go to LOGROOT/EXPERIMENTNAME/ (store.py says what is where); `python plot_results.py
LOGROOT/EXPERIMENTNAME` draws them. Bad input is one `train.py: error:` line and exit status 2; a failed run
(data, disk, checkpoint, divergence) is one such line and exit status 1.
"""
import sys

import config


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = config.make_parser(__doc__)
    args = parser.parse_args(argv)
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
    except (data.DataError, store.StoreError, trainer.Diverged, sweep.SweepFailed) as e:
        parser.exit(1, f"train.py: error: {e}\n")


if __name__ == "__main__":
    main()
