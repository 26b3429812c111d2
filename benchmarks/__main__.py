"""`python -m benchmarks` (`make bench`): run every `benchmarks/bench_*.py`, one process each."""

import subprocess
import sys
from pathlib import Path

failed = []
for script in sorted(Path(__file__).parent.glob("bench_*.py")):
    print(f"== {script.stem}", flush=True)
    if subprocess.run([sys.executable, "-m", f"benchmarks.{script.stem}"]).returncode:
        failed.append(script.stem)
sys.exit(f"failed: {', '.join(failed)}" if failed else 0)
