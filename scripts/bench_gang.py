"""`scripts/bench allreduce`, second part: training tokens/s of phase 1 on one rank and on
a gang of two worker processes (the CPU ring on loopback), the same global batch and
steps, each the median of 3 runs of deploy/jobs/bench-gang.yaml through `outloud local`.
Prints a markdown section (the caller appends it to benchmarks/allreduce.md).
Usage: bench_gang.py OUTLOUD_BIN_DIR."""
import os
import re
import sys

from local_run import local_run

ROUNDS = 3
SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "jobs", "bench-gang.yaml")
TRAINED = r"language: loss ([\d.]+) -> ([\d.]+) over (\d+) steps in ([\d.]+) s; (\d+) tokens"
REDUCED = re.compile(r"language: rank 0 all-reduced ([\d.]+) MiB in ([\d.]+) s")


def run(bin_dir, ranks):
    """(seconds, tokens, final loss, all-reduce seconds, MiB) of one fresh run."""
    text = open(SPEC).read()
    if ranks > 1:
        text = text.replace("    eval: false\n", f"    eval: false\n    world_size: {ranks}\n")
    trained, printed = local_run(bin_dir, ranks, text, TRAINED)
    reduced = REDUCED.search(printed)
    seconds, tokens, loss = float(trained.group(4)), int(trained.group(5)), float(trained.group(2))
    allreduce = (float(reduced.group(2)), float(reduced.group(1))) if reduced else (0.0, 0.0)
    return (seconds, tokens, loss) + allreduce


def main():
    bin_dir = sys.argv[1]
    rows = []
    for ranks in (1, 2):
        runs = sorted((run(bin_dir, ranks) for _ in range(ROUNDS)), key=lambda r: r[0])
        seconds, tokens, loss, reduce_s, mib = runs[len(runs) // 2]
        rows.append((ranks, tokens, seconds, tokens / seconds, loss, reduce_s, mib))
        print(f"{ranks} rank(s): {tokens / seconds:.0f} tokens/s", file=sys.stderr, flush=True)
    print("\n## Training tokens/s, 1 rank against a gang of 2\n")
    print(f"Phase 1 of deploy/jobs/bench-gang.yaml (tiny model, batch 32, 300 steps), one worker "
          f"process a rank, 1 torch thread each, CPU ring on loopback; median of {ROUNDS} runs; "
          "the training step's wall time from its first lease to its commit (start-up included).\n")
    print("| ranks | tokens | seconds | tokens/s | final loss | all-reduce s (rank 0) | MiB reduced |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for ranks, tokens, seconds, rate, loss, reduce_s, mib in rows:
        print(f"| {ranks} | {tokens} | {seconds:.1f} | {rate:.0f} | {loss:.3f} | {reduce_s:.1f} | {mib:.0f} |")
    print(f"\n2 ranks against 1: {rows[1][3] / rows[0][3]:.2f}x tokens/s.")


if __name__ == "__main__":
    main()
