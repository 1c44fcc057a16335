"""`scripts/gpu-check profile`: where a bf16 training step's GPU time goes, Outloud (tch)
next to PyTorch eager with foreach AdamW, for one preset and batch (default: base, 16).

Each side runs its benchmark under Nsight Compute with collection off until the last
timed step (`--profile` brackets it with the CUDA profiler's start and stop), collecting
only each kernel's duration. Prints the kernel time by kind of kernel (matrix products,
attention, norms, cross-entropy, elementwise, reductions, copies) and the costliest
kernels of each side, with the step's wall time beside the kernels' sum: the difference
is time the GPU waited for launches. Usage: gpu_profile.py MODEL_BENCH [PRESET BATCH].
"""
import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from gpu_train import PRESETS, TORCH

KINDS = [
    ("matmul", r"gemm|nvjet|xmma|cutlass|cublas|splitK"),
    ("attention", r"flash|fmha|attention|sdpa|mem_eff"),
    ("layer norm", r"layer_norm|LayerNorm"),
    ("cross-entropy", r"softmax|nll_loss|cross_entropy|log_softmax"),
    ("embedding", r"embedding|index|scatter|gather"),
    ("reduction", r"reduce|norm_kernel|sum_kernel"),
    ("copy / cast / cat", r"copy|CatArray|cat_|direct_copy|fill"),
    ("elementwise", r"elementwise|vectorized|unrolled|gelu|lerp|addc|foreach|multi_tensor|fused_adam"),
]


def kind_of(kernel):
    return next((kind for kind, pattern in KINDS if re.search(pattern, kernel, re.I)), "other")


def profile(command, folder, name):
    """(kernel name, microseconds) of every kernel the profiled step ran, and the JSON line."""
    report = os.path.join(folder, name)
    run = subprocess.run(["ncu", "--profile-from-start", "off", "--clock-control", "none",
                          "--metrics", "gpu__time_duration.sum", "--export", report, "--force-overwrite"]
                         + command, capture_output=True, text=True, timeout=240)
    result = next((json.loads(l) for l in run.stdout.splitlines() if l.startswith("{")), None)
    raw = subprocess.run(["ncu", "--import", report + ".ncu-rep", "--csv", "--page", "raw",
                          "--print-units", "base"], capture_output=True, text=True, timeout=120).stdout
    keep = os.environ.get("OUTLOUD_PROFILE_DIR")
    if keep:
        with open(os.path.join(keep, name + ".csv"), "w") as f:
            f.write(raw)
    rows = list(csv.reader(io.StringIO(raw[raw.find('"ID"'):])))
    if not rows:
        sys.exit(f"no kernels profiled for {name}: {run.stderr[-2000:]}")
    header = rows[0]
    name_at, time_at = header.index("Kernel Name"), header.index("gpu__time_duration.sum")
    kernels = []
    for row in rows[1:]:
        try:
            kernels.append((row[name_at], float(row[time_at].replace(",", "")) / 1e3))
        except (ValueError, IndexError):
            continue  # the units row
    return kernels, result


def by_kind(kernels):
    totals = {}
    for kernel, us in kernels:
        n, t = totals.get(kind_of(kernel), (0, 0.0))
        totals[kind_of(kernel)] = (n + 1, t + us)
    return totals


def main():
    binary = sys.argv[1]
    preset = sys.argv[2] if len(sys.argv) > 2 else "base"
    batch = sys.argv[3] if len(sys.argv) > 3 else "16"
    if shutil.which("ncu") is None:
        sys.exit("ncu (Nsight Compute) is not on the PATH: no profile")
    args = PRESETS[preset][0] + ["--batch", batch, "--repeats", "5", "--device", "cuda", "--bf16", "--profile"]
    with tempfile.TemporaryDirectory() as folder:
        sides = {
            "Outloud": profile([binary] + args + ["train"], folder, "ours"),
            "PyTorch foreach": profile([sys.executable, TORCH, "train"] + args + ["--foreach"], folder, "theirs"),
        }
    print(f"\n== where a step's GPU time goes: {preset}, batch {batch}, bf16 (ms of kernel time; kernels)")
    kinds = {name: by_kind(kernels) for name, (kernels, _) in sides.items()}
    order = sorted({k for t in kinds.values() for k in t}, key=lambda k: -kinds["PyTorch foreach"].get(k, (0, 0))[1])
    print("| kind | " + " | ".join(sides) + " |\n|---|" + "---:|" * len(sides))
    for kind in order:
        cells = [f"{t[1] / 1e3:.2f} ({t[0]})" for t in (kinds[n].get(kind, (0, 0.0)) for n in sides)]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    sums = [sum(us for _, us in kernels) / 1e3 for kernels, _ in sides.values()]
    print("| **all kernels** | " + " | ".join(f"**{s:.2f}** ({len(k)})" for s, (k, _) in zip(sums, sides.values())) + " |")
    walls = [r["step_ms"] if r else float("nan") for _, r in sides.values()]
    print("| step wall time (median, unprofiled steps) | " + " | ".join(f"{w:.2f}" for w in walls) + " |")
    for name, (kernels, _) in sides.items():
        merged = {}
        for kernel, us in kernels:
            n, t = merged.get(kernel, (0, 0.0))
            merged[kernel] = (n + 1, t + us)
        print(f"\n{name}: costliest kernels (ms, count)")
        for kernel, (n, t) in sorted(merged.items(), key=lambda kv: -kv[1][1])[:10]:
            print(f"  {t / 1e3:7.2f} {n:5d}  {kernel[:110]}")


if __name__ == "__main__":
    main()
