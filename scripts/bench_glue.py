"""GLUE fine-tuning speed, ours against PyTorch eager doing the same steps, side by side
in one run: examples per second of a training step (forward, backward, AdamW; batch
32, the 2025 pipeline's) and of predicting the validation file (64 a pass), on RTE, for
the tiny and small shapes. outloud-model-bench writes the token ids it used; PyTorch
runs bench_torch.py's GPT with the pipeline's classification head on exactly those.
Writes benchmarks/glue.md. Usage: bench_glue.py BIN_DIR."""
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_models import SHAPES, SHARED, machine  # noqa: E402
from bench_torch import Gpt, median  # noqa: E402
from glue_reference import hidden  # noqa: E402

BATCH, PREDICT_BATCH, ROUNDS, WARMUP = 32, 64, 3, 2
STEPS = {"tiny": 20, "small": 6}


def shape(name):
    flags = SHAPES[name]
    return {flags[i].lstrip("-").replace("-", "_"): int(flags[i + 1]) for i in range(0, len(flags), 2)}


class Classifier(nn.Module):
    """The GPT's last real token through the pipeline's head."""

    def __init__(self, s, labels=2):
        super().__init__()
        self.gpt = Gpt(s["vocab_size"], s["context"], s["d_model"], s["n_layers"], s["n_heads"])
        d = s["d_model"]
        self.head = nn.Sequential(nn.LayerNorm(d, elementwise_affine=False), nn.Linear(d, d), nn.GELU(),
                                  nn.LayerNorm(d, elementwise_affine=False), nn.Dropout(0.1), nn.Linear(d, labels))

    def forward(self, ids, last):
        return self.head(hidden(self.gpt, ids)[torch.arange(ids.shape[0]), last])


def batch(rows):
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    return ids, torch.tensor([len(r) - 1 for r in rows])


def torch_round(s, inputs):
    torch.manual_seed(0)
    model = Classifier(s)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=3e-5, betas=(0.9, 0.999), eps=1e-8)
    train, classes, steps = inputs["train"], inputs["classes"], len(inputs["train"]) // BATCH - WARMUP
    times = []
    model.train()
    for step in range(WARMUP + steps):
        ids, last = batch(train[step * BATCH:(step + 1) * BATCH])
        targets = torch.tensor(classes[step * BATCH:(step + 1) * BATCH])
        started = time.perf_counter()
        loss = F.cross_entropy(model(ids, last), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= WARMUP:
            times.append(time.perf_counter() - started)
    model.eval()
    valid, predict_times = inputs["valid"], []
    for _ in range(3):
        started = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(valid), PREDICT_BATCH):
                model(*batch(valid[i:i + PREDICT_BATCH])).argmax(-1)
        predict_times.append(time.perf_counter() - started)
    return BATCH / median(times), len(valid) / median(predict_times)


def main():
    binary = os.path.join(sys.argv[1], "outloud-model-bench")
    torch.set_num_threads(int(os.environ.get("OUTLOUD_BENCH_THREADS", "2")))
    rows = []
    for name in ("tiny", "small"):
        s = shape(name)
        ours_rounds, theirs_rounds = [], []
        for _ in range(ROUNDS):
            with tempfile.TemporaryDirectory() as out:
                command = [binary] + SHAPES[name] + ["--batch", str(BATCH), "--repeats", str(STEPS[name]),
                                                   "glue", "--glue", os.path.join(SHARED, "glue"), "--task", "rte", "--out", out]
                printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
                ours = json.loads(printed.splitlines()[-1])
                with open(os.path.join(out, "inputs.json")) as f:
                    inputs = json.load(f)
            ours_rounds.append((ours["train_examples_per_s"], ours["predict_examples_per_s"]))
            theirs_rounds.append(torch_round(s, inputs))
        ours = (median([r[0] for r in ours_rounds]), median([r[1] for r in ours_rounds]))
        theirs = (median([r[0] for r in theirs_rounds]), median([r[1] for r in theirs_rounds]))
        rows.append((name, ours, theirs))
        print(json.dumps({"shape": name, "ours": ours, "pytorch": theirs}))
    lines = ["# GLUE fine-tuning: `scripts/bench glue`", "",
             f"{datetime.date.today()}, {machine()}, torch {torch.__version__} (CPU, "
             f"{torch.get_num_threads()} threads both sides). RTE from ../shared/data/glue; batch {BATCH} "
             f"(the pipeline's), inputs cut to the shape's context; predicting the 139 validation lines "
             f"{PREDICT_BATCH} at a time. Medians of {ROUNDS} rounds, each the median of its timed steps "
             f"after {WARMUP} warm-up steps.", "",
             "| shape | ours train ex/s | PyTorch train ex/s | ratio | ours predict ex/s | PyTorch predict ex/s | ratio |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, ours, theirs in rows:
        lines.append(f"| {name} | {ours[0]:.0f} | {theirs[0]:.0f} | {ours[0] / theirs[0]:.2f} | "
                     f"{ours[1]:.0f} | {theirs[1]:.0f} | {ours[1] / theirs[1]:.2f} |")
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks", "glue.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
