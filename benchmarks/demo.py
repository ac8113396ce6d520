"""The demo's end-to-end time: the whole digits recipe into a fresh work dir."""
import os
import shutil
import tempfile
import time


def bench_demo_end_to_end():
    from mntk import train
    from recipes import digits

    config = digits.get_config()
    config.verbose = 0
    workdir = tempfile.mkdtemp(prefix="mntk_bench_demo_")
    try:
        start = time.perf_counter()
        summary = train.run(config, workdir)
        seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    per_stage = {s.name: s for s in summary.stages}
    return [{"name": "demo_end_to_end", "value": round(seconds, 1), "unit": "s",
             "stages": list(per_stage), "accuracy": summary.accuracy,
             "cpu_count": os.cpu_count()}]
