"""Hugging Face reference for rustspeed's Llama family: writes tests/fixtures/llama_*.safetensors.

Builds tiny random `LlamaForCausalLM` models with transformers itself (not a re-implementation), in two
variants that between them cover every switch rustspeed implements:

  llama_tiny_gqa     grouped-query attention (4 query heads, 2 key/value heads), untied head, no biases
  llama_tiny_tied    multi-head attention with an odd head count and head_dim, tied head, attention and MLP
                     biases, another rope_theta and rms_norm_eps

and records for one batch, with the model in float64 (so the fixture is an oracle far more exact than rustspeed's
fp32):

  param.<name>    initial weights (float32; RMSNorm gains and biases randomized so that their gradients matter)
  grad.<name>     d(loss)/d(param)
  tokens, targets the batch, int64 [B, T]
  logits          [B, T, V]
  loss            [1], mean cross-entropy of logits against targets
  train_losses    [10], the loss before each of 10 AdamW steps on the same batch

The metadata holds the model's `config.json` (what `rustspeed --model` reads), the optimizer and the versions.

It also writes two model directories as `save_pretrained` writes them, for `--init-from`:
  hf_llama_sharded_bf16/  a Llama in bfloat16, sharded (model.safetensors.index.json)
  hf_gpt2_fp16/           a GPT-2 (Conv1D orientation) in float16
each with expected.json: a batch and transformers' loss on the saved weights (float64).

Run:  python reference/make_llama_fixtures.py   (needs torch, transformers, safetensors; tests never need them;
      PRETRAINED_ONLY=1 writes only the model directories)
"""

import json
import os

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures")
TRAIN_STEPS = 10
ADAMW = {"type": "AdamW", "lr": 3e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.1}


def build(config_dict, seed):
    torch.manual_seed(seed)
    config = LlamaConfig(**config_dict, attn_implementation="eager")
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.02 * torch.randn_like(p))
    return model


def make_optimizer(model):
    params = dict(model.named_parameters())
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": ADAMW["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=ADAMW["lr"], betas=tuple(ADAMW["betas"]), eps=ADAMW["eps"])


def loss_of(model, tokens, targets):
    logits = model(input_ids=tokens).logits
    return logits, F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def write_fixture(name, config_dict, b, t, seed):
    model = build(config_dict, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    vocab = config_dict["vocab_size"]
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
    opt = make_optimizer(model)
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
        "transformers_version": transformers.__version__,
        # The whole config.json as this transformers writes it (5.x: rope_theta inside rope_parameters).
        "config": model.config.to_json_string(),
        "optimizer": json.dumps(ADAMW),
        "batch": json.dumps({"b": b, "t": t, "seed": seed}),
    }
    path = os.path.join(OUT_DIR, f"{name}.safetensors")
    save_file(tensors, path, metadata=metadata)
    print(f"{path}: loss {loss.item():.6f}, train losses {[round(x, 5) for x in losses]}")


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    gqa = {
        "vocab_size": 61,
        "hidden_size": 64,
        "intermediate_size": 176,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 64,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
    }
    write_fixture("llama_tiny_gqa", gqa, b=2, t=13, seed=2024)
    tied = dict(
        gqa,
        vocab_size=37,
        hidden_size=48,
        intermediate_size=100,
        num_attention_heads=3,
        num_key_value_heads=3,
        head_dim=10,
        rms_norm_eps=1e-6,
        rope_theta=500.0,
        tie_word_embeddings=True,
        attention_bias=True,
        mlp_bias=True,
    )
    write_fixture("llama_tiny_tied", tied, b=3, t=9, seed=77)


if __name__ == "__main__" and not os.environ.get("PRETRAINED_ONLY"):
    main()


def write_pretrained(name, model, vocab, b, t, seed, dtype, max_shard_size):
    """A model directory as `save_pretrained` writes it (16-bit, sharded), plus `expected.json`: a batch and the
    loss transformers computes on the saved (rounded) weights, in float64."""
    path = os.path.join(OUT_DIR, name)
    model.to(dtype).save_pretrained(path, max_shard_size=max_shard_size)
    reloaded = type(model).from_pretrained(path, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab, (b, t), generator=gen)
    targets = torch.randint(0, vocab, (b, t), generator=gen)
    with torch.no_grad():
        _, loss = loss_of(reloaded, tokens, targets)
    expected = {"tokens": tokens.tolist(), "targets": targets.tolist(), "loss": loss.item(),
                "transformers_version": transformers.__version__, "dtype": str(dtype)}
    with open(os.path.join(path, "expected.json"), "w") as f:
        json.dump(expected, f)
    print(f"{path}: {sorted(os.listdir(path))}, loss {loss.item():.6f}")


def pretrained_fixtures():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(5)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                         rms_norm_eps=1e-5, tie_word_embeddings=False))
    write_pretrained("hf_llama_sharded_bf16", llama, 40, b=2, t=7, seed=6, dtype=torch.bfloat16,
                     max_shard_size="40KB")
    torch.manual_seed(7)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=32, n_embd=32, n_layer=2, n_head=4))
    write_pretrained("hf_gpt2_fp16", gpt2, 40, b=2, t=7, seed=8, dtype=torch.float16, max_shard_size="10GB")


if __name__ == "__main__":
    pretrained_fixtures()
