"""Import-only stand-in for ray, used by bench/gpu_check.sh alone.

skeletor-ml imports ray.tune at import time, but the lent GPU machine has no ray and ray's wheel (79 MB)
exceeds what may travel there (64 MiB). The GPU check never uses ray: with this on PYTHONPATH skeletor
imports, and anything that really calls ray fails loudly.
"""
