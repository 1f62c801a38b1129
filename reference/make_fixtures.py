"""PyTorch reference for rustspeed's models: writes the fixtures under tests/fixtures/.

Builds the `gpt-tiny` and `lstm-tiny` presets in PyTorch with the same parameter names and shapes as
rustspeed (Hugging Face GPT-2 names and Conv1D orientation for `gpt`; nn.Embedding/nn.LSTM/nn.Linear names for
the seed's `lstm`), initializes them with PyTorch, and records for one batch:

  param.<name>    initial weights (float32)
  grad.<name>     d(loss)/d(param) at the initial weights
  tokens, targets the batch, int64 [B, T]
  logits          [B, T, V]
  loss            [1], mean cross-entropy
  train_losses    [10], the loss before each of 10 optimizer steps on the same batch
                  (AdamW for gpt, SGD with momentum 0.9 for lstm; hyperparameters in the metadata)

The weights are float32 values; every computation runs in float64 so that the fixture is an oracle whose own
error is far below rustspeed's fp32 tolerances. The metadata records the torch version and all settings.

Run:  python reference/make_fixtures.py   (needs torch and safetensors; tests never need them)
"""

import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
TRAIN_STEPS = 10


class Conv1D(nn.Module):
    """Hugging Face GPT-2's Conv1D: y = x W + b with W of shape [in, out]."""

    def __init__(self, n_in, n_out, std):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * std)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return x @ self.weight + self.bias


class Attention(nn.Module):
    def __init__(self, c, nh, proj_std):
        super().__init__()
        self.nh = nh
        self.c_attn = Conv1D(c, 3 * c, 0.02)
        self.c_proj = Conv1D(c, c, proj_std)

    def forward(self, x):
        b, t, c = x.shape
        hs = c // self.nh
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.nh, hs).transpose(1, 2) for z in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        scores = scores.masked_fill(~mask, float("-inf"))
        y = F.softmax(scores, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class Mlp(nn.Module):
    def __init__(self, c, proj_std):
        super().__init__()
        self.c_fc = Conv1D(c, 4 * c, 0.02)
        self.c_proj = Conv1D(4 * c, c, proj_std)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, c, nh, n_layer):
        super().__init__()
        proj_std = 0.02 / math.sqrt(2 * n_layer)
        self.ln_1 = nn.LayerNorm(c)
        self.attn = Attention(c, nh, proj_std)
        self.ln_2 = nn.LayerNorm(c)
        self.mlp = Mlp(c, proj_std)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Gpt(nn.Module):
    """GPT-2: learned positions, pre-LayerNorm, tanh-GELU, final LayerNorm, head tied to wte."""

    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(vocab_size, n_embd),
                wpe=nn.Embedding(block_size, n_embd),
                h=nn.ModuleList([Block(n_embd, n_head, n_layer) for _ in range(n_layer)]),
                ln_f=nn.LayerNorm(n_embd),
            )
        )
        nn.init.normal_(self.transformer.wte.weight, std=0.02)
        nn.init.normal_(self.transformer.wpe.weight, std=0.02)

    def forward(self, idx):
        tr = self.transformer
        pos = torch.arange(idx.shape[1])
        x = tr.wte(idx) + tr.wpe(pos)
        for block in tr.h:
            x = block(x)
        return F.linear(tr.ln_f(x), tr.wte.weight)


class MyLM(nn.Module):
    """The seed's model: Embedding -> LSTM (batch_first) -> Linear."""

    def __init__(self, vocab_size, embedding_dim, hidden_size, num_layers):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers, batch_first=True)
        self.linear = nn.Linear(hidden_size, vocab_size)

    def forward(self, idx):
        out, _ = self.lstm(self.embedding(idx))
        return self.linear(out)


def loss_of(model, tokens, targets):
    logits = model(tokens)
    return logits, F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def make_optimizer(model, spec):
    params = dict(model.named_parameters())
    if spec["type"] == "AdamW":
        decay = [p for n, p in params.items() if p.dim() >= 2]
        no_decay = [p for n, p in params.items() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": spec["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"])
    return torch.optim.SGD(params.values(), lr=spec["lr"], momentum=spec["momentum"])


def write_fixture(name, model, config, optimizer_spec, b, t, seed):
    gen = torch.Generator().manual_seed(seed + 1)
    vocab = config["vocab_size"]
    tokens = torch.randint(0, vocab, (b, t), generator=gen)
    targets = torch.randint(0, vocab, (b, t), generator=gen)
    tensors = {f"param.{n}": p.detach().float().clone().contiguous() for n, p in model.named_parameters()}

    model = model.double()
    logits, loss = loss_of(model, tokens, targets)
    loss.backward()
    tensors.update({f"grad.{n}": p.grad.float().contiguous() for n, p in model.named_parameters()})
    tensors["tokens"] = tokens
    tensors["targets"] = targets
    tensors["logits"] = logits.detach().float().contiguous()
    tensors["loss"] = loss.detach().float().reshape(1)

    model.zero_grad(set_to_none=True)
    opt = make_optimizer(model, optimizer_spec)
    losses = []
    for _ in range(TRAIN_STEPS):
        opt.zero_grad(set_to_none=True)
        _, step_loss = loss_of(model, tokens, targets)
        step_loss.backward()
        opt.step()
        losses.append(step_loss.item())
    tensors["train_losses"] = torch.tensor(losses, dtype=torch.float32)

    metadata = {
        "torch_version": torch.__version__,
        "config": json.dumps(config),
        "optimizer": json.dumps(optimizer_spec),
        "batch": json.dumps({"b": b, "t": t, "seed": seed}),
    }
    path = os.path.join(OUT_DIR, f"{name}.safetensors")
    save_file(tensors, path, metadata=metadata)
    print(f"{path}: loss {loss.item():.6f}, train losses {[round(x, 5) for x in losses]}")


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    # gpt-tiny: 2 layers, 4 heads, width 64, context 64; an odd vocabulary and T < context.
    seed = 1234
    torch.manual_seed(seed)
    gpt_config = {"vocab_size": 61, "block_size": 64, "n_layer": 2, "n_head": 4, "n_embd": 64}
    gpt = Gpt(**gpt_config)
    adamw = {"type": "AdamW", "lr": 3e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1}
    write_fixture("gpt_tiny", gpt, gpt_config, adamw, b=2, t=13, seed=seed)

    # lstm-tiny: embedding 64, 2 layers of hidden 128; an odd vocabulary.
    seed = 4321
    torch.manual_seed(seed)
    lstm_config = {"vocab_size": 29, "embedding_dim": 64, "hidden_size": 128, "num_layers": 2}
    lstm = MyLM(**lstm_config)
    sgd = {"type": "SGD", "lr": 0.1, "momentum": 0.9}
    write_fixture("lstm_tiny", lstm, lstm_config, sgd, b=3, t=7, seed=seed)


if __name__ == "__main__":
    main()
