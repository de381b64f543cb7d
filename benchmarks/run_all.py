"""`make bench`: every benchmark in this folder, one after the other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ("reference_experiments.py", "fidelity.py", "privacy_donors.py", "performance.py"):
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], cwd=HERE.parent, check=True)
