"""Runs outloud-model-bench and the PyTorch script side by side, in one run, and
writes the ratios to benchmarks/<what>.md. Usage: bench_models.py train|decode|eval BIN;
`loader` sets our input path (tokenizing real text, drawing a batch) beside our own
training step instead."""
import datetime
import json
import os
import platform
import subprocess
import sys

# Model shapes, as outloud-model-bench flags; every benchmark script takes them from here.
SHAPES = {
    "tiny": ["--d-model", "64", "--n-layers", "2", "--n-heads", "4", "--context", "64", "--vocab-size", "1024"],
    "small": ["--d-model", "256", "--n-layers", "6", "--n-heads", "8", "--context", "256", "--vocab-size", "8192"],
    # ~100M parameters: for GPUs and the checkpoint benchmark.
    "base": ["--d-model", "768", "--n-layers", "12", "--n-heads", "12", "--context", "512", "--vocab-size", "16384"],
}
# The presets the CPU model benchmarks run.
PRESETS = {name: SHAPES[name] for name in ("tiny", "small")}
REPEATS = {"tiny": "30", "small": "8"}
# Training batches fit each size; captions are decoded 16 at a time whatever the size.
BATCH = {("train", "tiny"): "16", ("train", "small"): "8", ("loader", "tiny"): "16", ("loader", "small"): "8", ("decode", "tiny"): "16", ("decode", "small"): "16",
         ("eval", "tiny"): "128", ("eval", "small"): "128"}
# BLiMP pairs per paradigm file scored in the eval benchmark (all for tiny).
EVAL_LIMIT = {"tiny": None, "small": 100}
SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")


ROUNDS = 3


def median_round(rounds):
    """The round whose first measurement is the median one."""
    key = next(k for k in ("tokens_per_s", "captions_per_s", "pairs_per_s", "batch_tokens_per_s") if k in rounds[0][0])
    return sorted(rounds, key=lambda r: r[0][key])[len(rounds) // 2]


def run(command):
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}"


def eval_round(binary, args, name):
    """One round of the eval benchmark: ours writes the checkpoint PyTorch then scores from."""
    import tempfile
    blimp = os.path.join(SHARED, "eval", "blimp_filtered")
    text = os.path.join(SHARED, "babylm-text", "train", "simple_wiki.train")
    limit = EVAL_LIMIT[name]
    with tempfile.TemporaryDirectory() as checkpoint:
        extra = ["--limit", str(limit)] if limit else []
        ours = run([binary] + args + ["eval", "--blimp", blimp, "--text", text, "--checkpoint", checkpoint] + extra)
        files = sorted(os.path.join(blimp, f) for f in os.listdir(blimp) if f.endswith(".jsonl"))
        batch = args[args.index("--batch") + 1]
        script = os.path.join(os.path.dirname(__file__), "score_blimp.py")
        theirs = run([sys.executable, script, checkpoint] + files + ["--batch", batch, "--time"]
                     + (["--pairs", str(limit)] if limit else []))
    return ours, theirs


def main():
    what, binary = sys.argv[1], sys.argv[2]
    device = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    extra = ["--device", device] + (["--bf16"] if device == "cuda" else [])
    torch_script = os.path.join(os.path.dirname(__file__), "bench_torch.py")
    rows = []
    for name, args in PRESETS.items():
        args = args + ["--repeats", REPEATS[name], "--batch", BATCH[(what, name)]] + extra
        # Alternate the two, ROUNDS times, and keep each one's median round: a noisy
        # neighbour then hurts both alike.
        ours, theirs, foreach = [], [], []
        for _ in range(ROUNDS):
            if what == "eval":
                o, t = eval_round(binary, args, name)
                ours.append(o)
                theirs.append(t)
                continue
            if what == "loader":
                text = os.path.join(SHARED, "babylm-text", "train", "simple_wiki.train")
                ours.append(run([binary] + args + ["loader", "--text", text]))
                theirs.append(run([binary] + args + ["train"]))
                continue
            ours.append(run([binary] + args + [what]))
            theirs.append(run([sys.executable, torch_script, what] + args))
            if what == "train":
                # PyTorch's multi-tensor AdamW: what our flat buffers compete with.
                foreach.append(run([sys.executable, torch_script, what] + args + ["--foreach"]))
        rows.append((name, median_round(ours), median_round(theirs), median_round(foreach) if foreach else None))
    today = datetime.date.today().isoformat()
    lines = [f"# Model benchmark: {what}", "", f"{today} on {machine()} ({device}); each the median of {ROUNDS} alternating rounds, each round a median over steps; both in one run.", ""]
    if what == "train":
        lines += ["| preset | params | outloud (tch, flat AdamW) tokens/s | PyTorch eager, per-parameter AdamW | ratio | PyTorch eager, foreach AdamW | ratio | outloud TFLOP/s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for name, ours, theirs, foreach in rows:
            o, t, f = ours[0], theirs[0], foreach[0]
            lines.append(f"| {name} | {o['params']:,} | {o['tokens_per_s']:,.0f} | {t['tokens_per_s']:,.0f} | {o['tokens_per_s'] / t['tokens_per_s']:.2f} | {f['tokens_per_s']:,.0f} | {o['tokens_per_s'] / f['tokens_per_s']:.2f} | {o['tflops']:.3f} |")
    elif what == "loader":
        lines += ["| preset | tokenizing, tokens/s (once a source) | drawing a batch, tokens/s | training step, tokens/s | batch drawing / training |", "|---|---:|---:|---:|---:|"]
        for name, ours, theirs, _ in rows:
            o, t = ours[0], theirs[0]
            lines.append(f"| {name} | {o['tokenize_tokens_per_s']:,.0f} | {o['batch_tokens_per_s']:,.0f} | {t['tokens_per_s']:,.0f} | {o['batch_tokens_per_s'] / t['tokens_per_s']:,.0f}x |")
        lines += ["", "Real text: ../shared/data/babylm-text/train/simple_wiki.train, lines as documents, the preset's vocabulary trained on it; "
                  "a batch is the training step's (rows x context windows drawn at the phase's mixture, as tensors on the device)."]
    elif what == "eval":
        lines += ["| preset | params | BLiMP pairs | outloud (tch) pairs/s | PyTorch eager pairs/s | ratio |", "|---|---:|---:|---:|---:|---:|"]
        for name, ours, theirs, _ in rows:
            o, t = ours[0], theirs[0]
            lines.append(f"| {name} | {o['params']:,} | {o['pairs']:,} | {o['pairs_per_s']:,.0f} | {t['pairs_per_s']:,.0f} | {o['pairs_per_s'] / t['pairs_per_s']:.2f} |")
        lines += ["", "Zero-shot BLiMP scoring (../shared/data/eval/blimp_filtered; the small preset on the first 100 pairs of each paradigm): "
                  "tokenize, sort by length, 128 sequences per forward pass, summed log-likelihoods, from a checkpoint the Rust side writes and "
                  "scripts/score_blimp.py reads. Outloud times the eval step's own code path (discovery excluded, tokenization included); "
                  "PyTorch times its tokenization and scoring of the same pairs with the same tokenizer and weights. Target: 2,000 pairs/s for tiny."]
    else:
        lines += ["| preset | KV cache captions/s | recompute captions/s | cache speed-up | PyTorch eager (KV cache) captions/s | ratio to PyTorch |", "|---|---:|---:|---:|---:|---:|"]
        for name, ours, theirs, _ in rows:
            cache = next(r for r in ours if r["mode"] == "kv_cache")["captions_per_s"]
            recompute = next(r for r in ours if r["mode"] == "recompute")["captions_per_s"]
            torch_rate = theirs[0]["captions_per_s"]
            lines.append(f"| {name} | {cache:,.1f} | {recompute:,.1f} | {cache / recompute:.1f}x | {torch_rate:,.1f} | {cache / torch_rate:.2f} |")
        lines += ["", "32 new tokens per caption after 16 visual tokens and a one-token prompt, batch 16, greedy."]
    report = "\n".join(lines) + "\n"
    print(report)
    os.makedirs("benchmarks", exist_ok=True)
    with open(f"benchmarks/{what}{'' if device == 'cpu' else '-' + device}.md", "w") as f:
        f.write(report)


if __name__ == "__main__":
    main()
