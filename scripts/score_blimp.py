"""Scores BLiMP-style minimal pairs with PyTorch, from an Outloud checkpoint folder
(manifest.json, model.safetensors, tokenizer.json), independently of the Rust code:
Hugging Face `tokenizers` reads the tokenizer, `safetensors` the weights, and the
model is bench_torch.py's GPT.

Scoring is the BabyLM pipeline's (lm-evaluation-harness): the empty context becomes the
end-of-text token, the continuation is " " + sentence, and a sentence's score is the
summed log-likelihood of its tokens.

    score_blimp.py CHECKPOINT FILE.jsonl [FILE.jsonl ...] [--pairs N] [--batch B] [--time]

Prints one JSON object: the scores ([good, bad] per pair, file by file), and with
--time the pairs scored per second (median of rounds).

With --hf, CHECKPOINT is a folder `outloud export` wrote, loaded by Hugging Face
`transformers` (AutoModelForCausalLM, AutoTokenizer) as any user would; --logits-of
ORIGINAL then also reports the largest difference between its logits and those of the
original checkpoint (loaded as above) on a fixed input.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import Gpt, median  # noqa: E402

# Outloud's parameter names -> bench_torch's.
RENAMES = [(".attn.qkv.", ".qkv."), (".attn.proj.", ".proj."), (".mlp.fc.", ".fc."), (".mlp.proj.", ".out.")]


def load(folder):
    with open(os.path.join(folder, "manifest.json")) as f:
        config = json.load(f)["model"]
    model = Gpt(config["vocab_size"], config["context"], config["d_model"], config["n_layers"], config["n_heads"])
    weights = {}
    for name, tensor in load_file(os.path.join(folder, "model.safetensors")).items():
        if name.startswith(("vision.", "projector.")):
            continue
        for old, new in RENAMES:
            name = name.replace(old, new)
        weights[name] = tensor.float()
    model.load_state_dict(weights, strict=True)
    tokenizer = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    return model.eval(), tokenizer, config["context"]


class HfModel:
    """An exported folder through `transformers`, with the interface `score` uses."""

    def __init__(self, folder):
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.model = AutoModelForCausalLM.from_pretrained(folder).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.context = self.model.config.n_positions

    def logits(self, ids):
        return self.model(ids).logits

    def encode(self, texts):
        return [self.tokenizer(t, add_special_tokens=False).input_ids for t in texts]

    def end_of_text(self):
        return self.tokenizer.convert_tokens_to_ids("<|endoftext|>")


class OurCheckpoint:
    """A checkpoint folder through `tokenizers`, `safetensors` and bench_torch's GPT."""

    def __init__(self, folder):
        self.model, self.tokenizer, self.context = load(folder)

    def logits(self, ids):
        return self.model.forward_embeddings(self.model.wte(ids), 0)

    def encode(self, texts):
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def end_of_text(self):
        return self.tokenizer.token_to_id("<|endoftext|>")


def requests(scorer, sentences):
    eot = scorer.end_of_text()
    out = []
    for ids in scorer.encode([" " + s for s in sentences]):
        tokens = ([eot] + ids)[-(scorer.context + 1):]
        out.append((tokens, min(len(ids), len(tokens) - 1)))
    return out


@torch.no_grad()
def score(scorer, reqs, batch):
    """Summed continuation log-likelihoods; `batch` sequences per forward, right-padded."""
    order = sorted(range(len(reqs)), key=lambda i: -len(reqs[i][0]))
    scores = [0.0] * len(reqs)
    for start in range(0, len(order), batch):
        chunk = order[start:start + batch]
        width = max(len(reqs[i][0]) - 1 for i in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, i in enumerate(chunk):
            tokens = reqs[i][0]
            ids[row, :len(tokens) - 1] = torch.tensor(tokens[:-1])
        log_probs = F.log_softmax(scorer.logits(ids).float(), dim=-1)
        for row, i in enumerate(chunk):
            tokens, cont = reqs[i]
            n = len(tokens) - 1
            targets = torch.tensor(tokens[1:])
            picked = log_probs[row, :n].gather(1, targets[:, None])[:, 0]
            scores[i] = float(picked[n - cont:].double().sum())
    return scores


def main():
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("files", nargs="+")
    p.add_argument("--pairs", type=int, default=None, help="first N pairs of each file")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--time", action="store_true")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hf", action="store_true", help="CHECKPOINT is an exported folder, read by transformers")
    p.add_argument("--logits-of", help="with --hf: the original checkpoint, to compare logits with")
    args = p.parse_args()
    torch.manual_seed(0)
    scorer = HfModel(args.checkpoint) if args.hf else OurCheckpoint(args.checkpoint)
    pairs = []
    for path in args.files:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        pairs.append(rows[:args.pairs] if args.pairs else rows)
    sentences = [s for rows in pairs for r in rows for s in (r["sentence_good"], r["sentence_bad"])]
    result = {"threads": torch.get_num_threads(), "pairs": len(sentences) // 2}
    if args.logits_of:
        original = OurCheckpoint(args.logits_of)
        ids = torch.tensor([[(7 * i + 3) % original.model.wte.num_embeddings for i in range(min(32, scorer.context))]])
        with torch.no_grad():
            result["logits_max_abs_diff"] = float((scorer.logits(ids) - original.logits(ids)).abs().max())
    if args.time:
        times = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            score(scorer, requests(scorer, sentences), args.batch)
            times.append(time.perf_counter() - started)
        result["pairs_per_s"] = result["pairs"] / median(times)
    else:
        flat = score(scorer, requests(scorer, sentences), args.batch)
        it = iter(flat)
        result["scores"] = [[[next(it), next(it)] for _ in rows] for rows in pairs]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
