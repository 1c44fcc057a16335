"""Recomputes, in PyTorch and independently of the Rust code, the first GLUE batch that
`outloud-worker finetune --dump-first-batch DIR` wrote: the token ids of each text pair
(Hugging Face `tokenizers`, the pair's tokens one after the other, cut longest-first),
the class logits of the GPT's last real token through the BabyLM 2025 pipeline's head
(norm, dense, GELU, norm, dropout, linear), and the batch's mean cross-entropy.

    glue_reference.py CHECKPOINT DIR

Prints one JSON object: whether the ids agree, the largest logit difference and the
loss difference.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from score_blimp import load  # noqa: E402

EPS = 1e-5


def encode_pair(tokenizer, first, second, limit):
    a = tokenizer.encode(first, add_special_tokens=False).ids
    b = tokenizer.encode(second, add_special_tokens=False).ids
    while len(a) + len(b) > limit:
        if len(a) > len(b):
            a.pop()
        else:
            b.pop()
    return a + b


def hidden(model, ids):
    """The last layer's states after the final norm (B, T, C), causal."""
    x = model.wte(ids) + model.wpe(torch.arange(ids.shape[1]))
    for block in model.blocks:
        x = block(x, None)
    return model.ln_f(x)


def main():
    checkpoint, folder = sys.argv[1], sys.argv[2]
    model, tokenizer, _ = load(checkpoint)
    with open(os.path.join(folder, "batch.json")) as f:
        batch = json.load(f)
    head = load_file(os.path.join(folder, "head.safetensors"))
    ids = [encode_pair(tokenizer, a, b, batch["limit"]) for a, b in batch["texts"]]
    pad = tokenizer.token_to_id("<|endoftext|>") or 0
    width = max(len(r) for r in ids)
    padded = torch.tensor([r + [pad] * (width - len(r)) for r in ids])
    last = torch.tensor([len(r) - 1 for r in ids])
    with torch.no_grad():
        states = hidden(model, padded)[torch.arange(len(ids)), last]  # (B, C)
        d = states.shape[-1]
        x = F.layer_norm(states, (d,), eps=EPS)
        x = F.gelu(F.linear(x, head["glue_head.dense.weight"], head["glue_head.dense.bias"]))
        x = F.layer_norm(x, (d,), eps=EPS)
        logits = F.linear(x, head["glue_head.out.weight"], head["glue_head.out.bias"])
        loss = F.cross_entropy(logits, torch.tensor(batch["labels"])).item()
    ours = torch.tensor(batch["logits"])
    print(json.dumps({
        "ids_equal": ids == batch["ids"],
        "max_logit_diff": (logits - ours).abs().max().item(),
        "loss_diff": abs(loss - batch["loss"]),
        "loss": loss,
        # Equal logits that did not depend on the input would prove nothing.
        "logit_spread": (logits - logits.mean(0)).abs().max().item(),
    }))


if __name__ == "__main__":
    main()
