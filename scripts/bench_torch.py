"""PyTorch eager doing what outloud-model-bench does, for side-by-side numbers.

The same GPT (pre-norm, causal SDPA, learned positions, tied embeddings, GELU tanh),
the same AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices, per-parameter
updates), the same clipping. Prints one JSON object per measurement.
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def attend(self, x, cache):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, 2)
        q, k, v = (y.view(b, t, self.heads, c // self.heads).transpose(1, 2) for y in (q, k, v))
        causal = True
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)
                causal = False
            cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v, is_causal=causal and t > 1)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))

    def forward(self, x, cache=None):
        x = x + self.attend(self.ln1(x), cache)
        return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab, context, d, layers, heads):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)

    def forward_embeddings(self, x, start, caches=None):
        x = x + self.wpe(torch.arange(start, start + x.shape[1], device=x.device))
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.ln_f(x) @ self.wte.weight.T

    def loss(self, ids, targets):
        logits = self.forward_embeddings(self.wte(ids), 0)
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def median(xs):
    return sorted(xs)[len(xs) // 2]


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def train(model, args, device):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=1e-3, betas=(0.9, 0.95), eps=1e-8, foreach=args.foreach,
        **({"fused": True} if args.fused else {}),
    )
    times = []
    steps = args.repeats + 3
    # One batch, repeated, as outloud-model-bench does: the loss must fall.
    ids = torch.randint(args.vocab_size, (args.batch, args.context + 1), device=device)
    losses = []
    for i in range(steps):
        sync(device)
        profiled = args.profile and i + 1 == steps and device == "cuda"
        if profiled:
            torch.cuda.profiler.start()
        started = time.perf_counter()
        opt.zero_grad(set_to_none=False)
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sync(device)
        if i >= 3:
            times.append(time.perf_counter() - started)
        if profiled:
            torch.cuda.profiler.stop()
        if i == 0 or i + 1 == steps:
            losses.append(loss.item())
    step = median(times)
    tokens = args.batch * args.context
    params = sum(p.numel() for p in model.parameters())
    flops = tokens * (6 * params + 12 * args.n_layers * args.context * args.d_model)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    # In use as the driver sees it (the caching allocator's high-water mark and the
    # context), measured as outloud-model-bench measures it.
    in_use = None
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        in_use = (total - free) / 2**30
    adamw = "fused" if args.fused else "foreach" if args.foreach else "per-parameter"
    print(json.dumps({"impl": f"pytorch eager, {adamw} AdamW", "what": "train", "params": params, "threads": torch.get_num_threads(),
                      "step_ms": step * 1e3, "tokens_per_s": tokens / step, "tflops": flops / step / 1e12,
                      "peak_gib": peak, "device_gib": in_use, "loss_first": losses[0], "loss_last": losses[-1]}))


@torch.no_grad()
def decode(model, args, device, dtype):
    visual = (torch.randn(args.batch, args.prefix, args.d_model, device=device) * 0.02).to(dtype)
    prompt = torch.ones(args.batch, 1, dtype=torch.long, device=device)
    times = []
    for i in range(min(args.repeats, 10) + 1):
        sync(device)
        started = time.perf_counter()
        caches = [dict() for _ in model.blocks]
        x = torch.cat([visual, model.wte(prompt)], 1)
        logits = model.forward_embeddings(x, 0, caches)
        position = x.shape[1]
        for _ in range(args.new_tokens):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            logits = model.forward_embeddings(model.wte(nxt), position, caches)
            position += 1
        sync(device)
        if i >= 1:
            times.append(time.perf_counter() - started)
    print(json.dumps({"impl": "pytorch eager", "what": "decode", "mode": "kv_cache", "batch": args.batch,
                      "new_tokens": args.new_tokens, "captions_per_s": args.batch / median(times)}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["train", "decode"])
    for name, default in [("d_model", 64), ("n_layers", 2), ("n_heads", 4), ("context", 64), ("vocab_size", 1024),
                          ("batch", 16), ("repeats", 20), ("prefix", 16), ("new_tokens", 32)]:
        p.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=default)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--foreach", action="store_true", help="AdamW's multi-tensor path (PyTorch's CUDA default)")
    p.add_argument("--fused", action="store_true", help="AdamW's fused CUDA kernel")
    p.add_argument("--profile", action="store_true",
                   help="bracket the last training step with the CUDA profiler's start and stop (ncu)")
    args = p.parse_args()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model = Gpt(args.vocab_size, args.context, args.d_model, args.n_layers, args.n_heads).to(args.device, dtype)
    if args.what == "train":
        train(model, args, args.device)
    else:
        decode(model, args, args.device, dtype)


if __name__ == "__main__":
    main()
