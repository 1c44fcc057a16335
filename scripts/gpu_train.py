"""`scripts/gpu-check train`: tokens/s of a bf16 training step for the tiny, small and
base presets at growing batch sizes (until one does not fit or the list ends), Outloud
(tch, flat AdamW with f32 masters) next to PyTorch eager with its default foreach AdamW
and with fused=True, in one run; TFLOP/s and MFU against the card's dense bf16 peak, and
device memory in use on each side (the driver's count: the caching allocator's high-water
mark and the CUDA context). Usage: gpu_train.py MODEL_BENCH [PEAK_TFLOPS] (run with the GPU
machine's python, which has torch). OUTLOUD_GPU_TRAIN_DEVICE=cpu tries the logic on a
CPU with tiny sizes."""
import json
import os
import subprocess
import sys
import time

from bench_models import SHAPES

DEVICE = os.environ.get("OUTLOUD_GPU_TRAIN_DEVICE", "cuda")
BATCHES = {"tiny": [64, 4096], "small": [32, 512], "base": [16, 64, 128, 256]}
PRESETS = {name: (SHAPES[name], batches) for name, batches in BATCHES.items()}
if DEVICE == "cpu":
    PRESETS = {"tiny": (PRESETS["tiny"][0], [4, 8])}
# The section stays under 5 minutes: no new measurement starts after this many seconds.
BUDGET_S = float(os.environ.get("OUTLOUD_GPU_TRAIN_BUDGET_S", "270"))
TORCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_torch.py")


def measure(command):
    """The JSON line a benchmark printed, or None when it failed (out of memory)."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return next((json.loads(l) for l in out.splitlines() if l.startswith("{")), None)


def main():
    binary = sys.argv[1]
    peak = float(sys.argv[2]) if len(sys.argv) > 2 else 989.0
    extra = ["--device", DEVICE] + (["--bf16"] if DEVICE == "cuda" else [])
    print("| preset | params | batch | Outloud tokens/s | TFLOP/s | MFU | PyTorch foreach | ratio | PyTorch fused | ratio | Outloud GiB | PyTorch GiB | loss first -> last, Outloud / PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    started = time.monotonic()
    for name, (shape, batches) in PRESETS.items():
        for batch in batches:
            if time.monotonic() - started > BUDGET_S:
                print(f"| {name} | | {batch} | not measured: the section's time is spent | | | | | | | | | |", flush=True)
                break
            args = shape + ["--batch", str(batch), "--repeats", "10"] + extra
            ours = measure([binary] + args + ["train"])
            if ours is None:
                print(f"| {name} | | {batch} | does not fit (or failed) | | | | | | | | | |", flush=True)
                break
            foreach = measure([sys.executable, TORCH, "train"] + args + ["--foreach"])
            fused = measure([sys.executable, TORCH, "train"] + args + ["--fused"]) if DEVICE == "cuda" else None
            rate = ours["tokens_per_s"]
            cell = lambda r: (f"{r['tokens_per_s']:,.0f}", f"{rate / r['tokens_per_s']:.2f}") if r else ("-", "-")
            (f_rate, f_ratio), (u_rate, u_ratio) = cell(foreach), cell(fused)
            gib = lambda r: "-" if not r or r.get("device_gib") is None else f"{r['device_gib']:.1f}"
            fall = lambda r: "-" if not r else f"{r['loss_first']:.2f} -> {r['loss_last']:.2f}"
            print(f"| {name} | {ours['params']:,} | {batch} | {rate:,.0f} | {ours['tflops']:.1f} | "
                  f"{100 * ours['tflops'] / peak:.1f}% | {f_rate} | {f_ratio} | {u_rate} | {u_ratio} | "
                  f"{gib(ours)} | {gib(foreach)} | {fall(ours)} / {fall(foreach)} |", flush=True)


if __name__ == "__main__":
    main()
