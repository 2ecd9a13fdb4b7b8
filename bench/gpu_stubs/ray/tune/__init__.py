"""See ray/__init__.py: import-only; every entry point raises."""


def _unavailable(*args, **kwargs):
    raise RuntimeError("ray is not installed on this machine (bench/gpu_stubs provides only its names)")


register_trainable = run_experiments = _unavailable
