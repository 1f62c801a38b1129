"""PyTorch side of `rustspeed bench --compare-pytorch`: times full training steps of the same model shapes.

Run by the `rustspeed` binary (which passes every shape, the thread count and the timing protocol), or by hand:

    python bench/pytorch_bench.py --model gpt --vocab 8192 --layers 4 --heads 4 --width 256 --context 128 \
        --batch 8 --seq 128 --threads 2 --warmup 3 --steps 20

Models, written to match rustspeed's `gpt` and `lstm` families (torch 2.15, CPU, fp32):
- `gpt`: GPT-2 in the nanoGPT style: token + learned position embedding, pre-LayerNorm blocks (fused QKV
  projection, `scaled_dot_product_attention` with the causal mask, 4x MLP with tanh-GELU), final LayerNorm, head
  tied to the token embedding, biases everywhere; AdamW with weight decay on tensors of rank >= 2 only (as
  rustspeed decays them), lr 3e-4, weight decay 0.1.
- `lstm`: the seed's `MyLM`: Embedding(V, E) -> LSTM(E, H, L, batch_first) -> Linear(H, V); SGD momentum 0.9,
  lr 1e-3.
- `llama`: transformers' own `LlamaForCausalLM` from the `--hf-config` JSON rustspeed passes (sdpa attention, its
  fastest on CPU), fused AdamW (decay on rank >= 2), lr 3e-4, weight decay 0.1.

A step is forward, cross-entropy loss, backward, optimizer step, zeroing gradients; tokens and targets are
uniform random ids drawn before timing. The last line is machine-readable:
`ms_per_step=... tokens_per_s=... peak_rss_mb=... torch=...`.
"""

import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(width)
        self.c_attn = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.c_fc = nn.Linear(width, 4 * width)
        self.mlp_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab, layers, heads, width, context):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        self.h = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, tokens, targets):
        t = tokens.shape[1]
        x = self.wte(tokens) + self.wpe(torch.arange(t))
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


class MyLM(nn.Module):
    def __init__(self, vocab, embedding, hidden, layers):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embedding)
        self.lstm = nn.LSTM(embedding, hidden, layers, batch_first=True)
        self.linear = nn.Linear(hidden, vocab)

    def forward(self, tokens, targets):
        out, _ = self.lstm(self.embedding(tokens))
        logits = self.linear(out)
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


class HfLlama(nn.Module):
    """transformers' own `LlamaForCausalLM` (its fastest CPU attention, sdpa), returning the mean loss."""

    def __init__(self, config_json):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        config = json.loads(config_json)
        config.pop("model_type", None)
        self.inner = LlamaForCausalLM(LlamaConfig(**config, attn_implementation="sdpa"))

    def forward(self, tokens, targets):
        logits = self.inner(input_ids=tokens).logits
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def adamw(model):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    # fused=True is PyTorch's fastest AdamW on CPU (one kernel over all tensors).
    return torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, fused=True)


def build(args):
    if args.model == "llama":
        model = HfLlama(args.hf_config)
        return model, adamw(model)
    if args.model == "gpt":
        model = Gpt(args.vocab, args.layers, args.heads, args.width, args.context)
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=3e-4, betas=(0.9, 0.999), eps=1e-8)
    else:
        model = MyLM(args.vocab, args.width, args.hidden, args.layers)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    return model, optimizer


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["gpt", "lstm", "llama"], required=True)
    ap.add_argument("--hf-config", default="", help="llama: the model's config.json, as one JSON string")
    ap.add_argument("--vocab", type=int, required=True)
    ap.add_argument("--layers", type=int, default=0)
    ap.add_argument("--heads", type=int, default=1)
    ap.add_argument("--width", type=int, default=0, help="GPT d_model, or the LSTM's embedding size")
    ap.add_argument("--hidden", type=int, default=0, help="LSTM hidden size")
    ap.add_argument("--context", type=int, default=0, help="GPT context length")
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(1337)
    model, optimizer = build(args)
    model.train()
    gen = torch.Generator().manual_seed(1337)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen)
    targets = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen)

    def step():
        loss = model(tokens, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    ms = statistics.median(times) * 1e3
    tokens_per_s = args.batch * args.seq / (ms / 1e3)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"ms_per_step={ms:.2f} tokens_per_s={tokens_per_s:.1f} peak_rss_mb={peak_rss_mb:.0f} torch={torch.__version__}")


if __name__ == "__main__":
    sys.exit(main())
