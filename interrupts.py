"""Ctrl-C (SIGINT) and SIGTERM: a run stops between two Python statements, closes what it wrote, and says where
it stopped (`Stopped`). Torch-free, so that train.py handles them from its first line."""
import contextlib
import signal
import threading


class Stopped(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped the run. `where`: where it stopped and what was kept; `kept`: whether
    a trial is left to resume (one stopped before its first checkpoint is removed: it holds nothing)."""

    def __init__(self, signum=signal.SIGINT, where="", kept=False):
        super().__init__(where)
        self.signum, self.where, self.kept = signum, where, kept


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM raise Stopped (SIGTERM would otherwise end the process at once: no message, the
    trial's parameter file left as it was). After the first, both do nothing until the block ends, so that
    closing the trial is not cut short. Outside the main thread (where Python runs handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stopped = []

    def stop(signum, frame):
        # (not SIG_IGN: Python complains of a race when a second signal is already pending as the first is handled)
        if not stopped:
            stopped.append(signum)
            raise Stopped(signum)

    for s in previous:
        signal.signal(s, stop)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
