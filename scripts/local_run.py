"""One fresh `outloud local` run, shared by the benchmarks that time whole jobs."""
import os
import re
import subprocess
import sys
import tempfile


def local_run(bin_dir, workers, spec_text, wanted):
    """Runs `spec_text` with `workers` workers in a fresh folder; answers the match of
    the regular expression `wanted` in what it printed, and all it printed."""
    with tempfile.TemporaryDirectory() as cwd:
        spec = os.path.join(cwd, "spec.yaml")
        with open(spec, "w") as f:
            f.write(spec_text)
        out = subprocess.run(
            [os.path.join(bin_dir, "outloud"), "local", "--workers", str(workers), spec],
            cwd=cwd, capture_output=True, text=True, check=True)
    found = re.search(wanted, out.stdout)
    if not found:
        sys.exit(f"no line matching {wanted!r} in:\n{out.stdout}\n{out.stderr}")
    return found, out.stdout
