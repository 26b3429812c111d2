"""Run one pipeline stage in this process (cwd: a project folder) and print its own cost.

`python -m benchmarks._stage STAGE` does what `alien-hotels STAGE` does (as `dvc repro` would
run it: one process per stage), then prints one line `BENCH {json}` with the wall time from
before the imports, the CPU time and the peak RSS of this process (`peak_rss_mb`).
"""

from __future__ import annotations

import time

_START = time.perf_counter()

import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    Linux's `VmHWM` belongs to the process image: `ru_maxrss` would also count the RSS of the
    parent at fork time (the kernel folds the old image's high-water mark in at exec), which
    makes every stage look as large as the benchmark driver.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def main() -> None:
    stage = sys.argv[1]
    import importlib

    from alien_hotels.config import load_params

    importlib.import_module(f"alien_hotels.stages.{stage}").run(load_params())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        "BENCH "
        + json.dumps(
            {
                "stage": stage,
                "wall_s": time.perf_counter() - _START,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "max_rss_mb": peak_rss_mb(),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
