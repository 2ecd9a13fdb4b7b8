"""The one place that knows skeletor-ml and track-ml.

skeletor-ml 0.1.4 supplies the command line's standard arguments (experimentname, --logroot, --dataroot,
--seed, ...) and track-ml stores each run as a trial under LOGROOT/EXPERIMENTNAME/:

    LOGROOT/EXPERIMENTNAME/trials/<trial_id>_param_map.json   the run's arguments and status
    LOGROOT/EXPERIMENTNAME/trials/<trial_id>_result.json      one JSON object per logged row
    LOGROOT/EXPERIMENTNAME/<trial_id>/                         artifacts: checkpoints, log.txt

so `skeletor.proc.df_from_proj(skeletor.proc.proj(proj_dir=...))` reads the results back. skeletor's own
launcher (`execute`, `--config` through ray) is not used: it cannot resume a trial and its ray path is
broken on current ray. Values are logged as plain Python numbers because track's JSON writer turns numpy
scalars into invalid JSON.
"""
import argparse
import json
import logging
import os
import shutil

import skeletor
import skeletor.launcher
import track
from track.constants import CONFIG_SUFFIX, METADATA_FOLDER, RESULT_SUFFIX

# track echoes its debug log ("(re)initilized logging") to stdout unless a stdout handler already exists:
# install a quiet one. Its log.txt in each trial folder still gets everything.
_quiet_stdout = track.log.StdoutHandler()
_quiet_stdout.setLevel(logging.WARNING)
logging.getLogger("track").addHandler(_quiet_stdout)

# skeletor's ray/S3 launcher arguments: accepted for compatibility, unused, hidden from --help.
LAUNCHER_ARGS = ("self_host", "cpu", "port", "server_port", "devices_per_trial", "s3")


def make_parser(add_arguments, description):
    """skeletor's argument parser with its standard arguments, plus those `add_arguments(parser)` adds."""
    skeletor.supply_args(add_arguments)
    parser = skeletor.launcher._parser.val
    parser.description = description
    for action in parser._actions:
        if action.dest in LAUNCHER_ARGS:
            action.help = argparse.SUPPRESS
        elif action.dest == "config":
            action.help = "run the grid of trials in this YAML file (configs/*.yaml) instead of one trial"
    return parser


def experiment_dir(logroot, experimentname):
    return os.path.join(logroot, experimentname)


def list_trials(logroot, experimentname):
    """The param maps of the experiment's trials, oldest first ([] when there are none)."""
    folder = os.path.join(experiment_dir(logroot, experimentname), METADATA_FOLDER)
    if not os.path.isdir(folder):
        return []
    trials = []
    for name in os.listdir(folder):
        if name.endswith(CONFIG_SUFFIX):
            path = os.path.join(folder, name)
            try:
                with open(path) as f:
                    trials.append(json.load(f))
            except (OSError, ValueError) as e:
                raise ValueError(f"{path}: not a readable trial parameter file ({e})") from None
    return sorted(trials, key=lambda t: t.get("start_time", ""))


def read_results(proj_dir):
    """All trials' rows as one pandas DataFrame, through skeletor's own reader."""
    return skeletor.proc.df_from_proj(skeletor.proc.proj(proj_dir=proj_dir))


class Trial:
    """A track trial opened for writing; `resume_id` reopens an existing one.

    track always starts a fresh result file, so reopening rewrites the rows logged up to the resumed
    checkpoint (`keep_until_step`, inclusive) and drops the rows of the interrupted epoch after it.
    """

    def __init__(self, logroot, experimentname, params, resume_id=None, keep_until_step=None):
        log_dir = experiment_dir(logroot, experimentname)
        self._trial = track.Trial(log_dir=log_dir, param_map=dict(params))
        kept_rows = []
        if resume_id is not None:
            fresh_dir = self._trial.artifact_dir
            kept_rows = [row for row in _read_rows(self._result_file(log_dir, resume_id))
                         if row.get("iteration") is None or row["iteration"] <= keep_until_step]
            self._trial.trial_id = resume_id
            self._trial.artifact_dir = os.path.join(log_dir, resume_id)
            self._trial.param_map["trial_id"] = resume_id
            _close_track_file_logs()
            track.log.init(self._trial.logging_handler())
            shutil.rmtree(fresh_dir)
        self._trial.param_map["finished"] = False
        self._trial.start()
        for row in kept_rows:
            self._trial.metric(**row)

    @staticmethod
    def _result_file(log_dir, trial_id):
        return os.path.join(log_dir, METADATA_FOLDER, f"{trial_id}_{RESULT_SUFFIX}")

    @property
    def trial_id(self):
        return self._trial.trial_id

    @property
    def dir(self):
        return self._trial.artifact_dir

    def log(self, **values):
        """One result row; `iteration` is the global optimizer step."""
        self._trial.metric(**values)

    def close(self, finished):
        """Write the final param map; `finished` marks a run that completed all its epochs."""
        self._trial.param_map["finished"] = bool(finished)
        self._trial.close()
        _close_track_file_logs()


def _close_track_file_logs():
    for handler in logging.getLogger("track").handlers:
        if isinstance(handler, track.log.TrackLogHandler):
            handler.close()


def _read_rows(path):
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except ValueError:
                break  # a line cut short by an interrupted write
            row.pop("trial_id", None)
            rows.append(row)
    return rows
