"""`scripts/bench synth`: captions per second of a synthesize step (phase 3a) with 1 and
with 2 workers on the same 8 shards, each the median of 3 runs of
deploy/jobs/bench-synth.yaml through `outloud local`. Writes benchmarks/synth.md.
Usage: bench_synth.py OUTLOUD_BIN_DIR."""
import datetime
import os
import platform
import sys

from local_run import local_run

ROUNDS = 3
SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "jobs", "bench-synth.yaml")
LINE = r"dreaming\.synthesize: (\d+) captions kept of (\d+) pictures in ([\d.]+) s"


def run(bin_dir, workers):
    """(pictures, seconds) of the synthesize step of one fresh run."""
    found, _ = local_run(bin_dir, workers, open(SPEC).read(), LINE)
    return int(found.group(2)), float(found.group(3))


def main():
    bin_dir = sys.argv[1]
    rows = []
    for workers in (1, 2):
        runs = sorted((run(bin_dir, workers) for _ in range(ROUNDS)), key=lambda r: r[1])
        pictures, seconds = runs[len(runs) // 2]
        rows.append((workers, pictures, seconds, pictures / seconds))
        print(f"{workers} worker(s): {pictures} captions in {seconds:.1f} s = {pictures / seconds:.0f}/s", flush=True)
    speedup = rows[1][3] / rows[0][3]
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    report = (
        "# Synthesize step (phase 3a)\n\n"
        f"{datetime.date.today()} on {os.cpu_count()} cores, {cpu}; CPU, 1 torch thread a worker; "
        f"tiny model, 2,000 unlabeled pictures, 8 shards, top-p, up to 24 tokens a caption; "
        f"median of {ROUNDS} runs; the step's wall time from its first lease to its last commit.\n\n"
        "| workers | captions | seconds | captions/s |\n|---:|---:|---:|---:|\n"
        + "".join(f"| {w} | {p} | {s:.1f} | {r:.0f} |\n" for w, p, s, r in rows)
        + f"\n2 workers against 1: {speedup:.2f}x.\n"
    )
    os.makedirs("benchmarks", exist_ok=True)
    with open("benchmarks/synth.md", "w") as f:
        f.write(report)
    print(report)


if __name__ == "__main__":
    main()
