"""Hugging Face transformers as the oracle for `rustspeed export`: writes tests/fixtures/hf_gpt2_export.safetensors.

Reads a file written by `rustspeed export` (a `gpt` model), builds `transformers.GPT2LMHeadModel` from the
`rustspeed_model` metadata, loads the exported tensors into it under their own names, and evaluates the logits of a
fixed token batch in float64. Loading is `load_state_dict(strict=False)` with two assertions: no exported tensor is
unknown to transformers, and the only missing keys are the LM head tied to `transformer.wte.weight` and buffers
(not parameters). The missing keys are printed.

With `--write-fixture PATH` it writes a safetensors file with

  <exported names>  the exported tensors, unchanged (float32)
  tokens            int64 [B, T], the fixed batch (B=2, T=11, drawn with torch.Generator seed 0)
  logits            float64 [B, T, V], GPT2LMHeadModel's logits for `tokens`

and metadata `transformers_version`, `torch_version`, `rustspeed_model` (the export's JSON, verbatim).
Generated with transformers 5.24.0 and torch 2.15.0. The Rust side is crates/engine/tests/hf_export.rs.

Regenerate the fixture (from the repository root; the prepared data and run are throwaway):

  cargo build -p rustspeed
  rm -rf /tmp/hfx && mkdir -p /tmp/hfx
  echo '{"train_batch_size": 8, "optimizer": {"type": "AdamW", "params": {"lr": 0.003}}}' > /tmp/hfx/cfg.json
  target/debug/rustspeed prepare --input /work/shared/data/tinyshakespeare.txt --out /tmp/hfx/data
  target/debug/rustspeed train --model gpt-tiny --config /tmp/hfx/cfg.json --data /tmp/hfx/data \
      --out /tmp/hfx/run --steps 30
  target/debug/rustspeed export --run /tmp/hfx/run --out /tmp/hfx/export.safetensors
  /opt/torchenv/bin/python reference/export_hf_gpt2.py /tmp/hfx/export.safetensors \
      --write-fixture tests/fixtures/hf_gpt2_export.safetensors

(`train` and `export` refuse to overwrite, hence the fresh /tmp/hfx.)
If transformers is missing from /opt/torchenv, the script installs it with `/opt/torchenv/bin/pip install
transformers` before importing it.
"""

import argparse
import importlib.util
import json
import subprocess
import sys

BATCH = 2
SEQ_LEN = 11
TOKEN_SEED = 0
TIED_HEAD = "lm_head.weight"
TIED_TO = "transformer.wte.weight"


def ensure_transformers():
    if importlib.util.find_spec("transformers") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "transformers"], check=True)


def read_export(path):
    """The exported tensors (by name) and the `rustspeed_model` metadata string."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    if "rustspeed_model" not in metadata:
        sys.exit(f"{path}: no 'rustspeed_model' metadata; is this a file written by `rustspeed export`?")
    return tensors, metadata["rustspeed_model"]


def build_model(spec):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    config = spec["config"]
    if config.get("family") != "gpt":
        sys.exit(f"model family is {config.get('family')!r}; only 'gpt' exports map onto GPT2LMHeadModel")
    hf_config = GPT2Config(
        vocab_size=config["vocab_size"],
        n_positions=config["block_size"],
        n_embd=config["n_embd"],
        n_layer=config["n_layer"],
        n_head=config["n_head"],
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=1e-5,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
    )
    hf_config._attn_implementation = "eager"
    return GPT2LMHeadModel(hf_config).to(torch.float64).eval()


def load_exported(model, tensors):
    """Loads `tensors` non-strictly and checks that nothing but the tied head and buffers was left out."""
    result = model.load_state_dict(tensors, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    print(f"missing keys: {missing}")
    print(f"unexpected keys: {unexpected}")
    buffers = {name for name, _ in model.named_buffers()}
    assert not unexpected, f"exported tensors unknown to GPT2LMHeadModel: {unexpected}"
    allowed = {TIED_HEAD} | buffers
    assert set(missing) <= allowed, f"missing keys beyond the tied head and buffers: {sorted(set(missing) - allowed)}"
    params = dict(model.named_parameters(remove_duplicate=False))
    assert params[TIED_HEAD] is params[TIED_TO], f"{TIED_HEAD} is not tied to {TIED_TO}"
    unloaded = set(params) - set(tensors) - {TIED_HEAD}
    assert not unloaded, f"parameters the export did not provide: {sorted(unloaded)}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", help="a .safetensors file written by `rustspeed export` (gpt family)")
    parser.add_argument("--write-fixture", metavar="PATH", help="write the tensors, tokens and logits here")
    args = parser.parse_args()

    ensure_transformers()
    import torch
    import transformers
    from safetensors.torch import save_file

    tensors, spec_json = read_export(args.export)
    spec = json.loads(spec_json)
    model = build_model(spec)
    load_exported(model, tensors)

    generator = torch.Generator().manual_seed(TOKEN_SEED)
    tokens = torch.randint(0, spec["config"]["vocab_size"], (BATCH, SEQ_LEN), generator=generator)
    with torch.no_grad():
        logits = model(input_ids=tokens).logits
    assert logits.dtype == torch.float64 and logits.shape == (BATCH, SEQ_LEN, spec["config"]["vocab_size"])
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(f"logits {tuple(logits.shape)}: mean {logits.mean().item():.6f}, std {logits.std().item():.6f}")

    if args.write_fixture:
        out = {name: t.contiguous() for name, t in tensors.items()}
        out["tokens"] = tokens.to(torch.int64)
        out["logits"] = logits.contiguous()
        metadata = {
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "rustspeed_model": spec_json,
        }
        save_file(out, args.write_fixture, metadata=metadata)
        print(f"wrote {args.write_fixture}")


if __name__ == "__main__":
    main()
