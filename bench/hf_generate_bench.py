"""transformers side of `rustspeed bench-generate --compare-transformers`: greedy generation with its KV cache.

Run by the `rustspeed` binary with the model's config.json and the shapes, or by hand:

    python bench/hf_generate_bench.py --hf-config '{"model_type": "gpt2", ...}' --prompt-tokens 512 \
        --new-tokens 256 --batch 1 --threads 2

Random weights (from the config), random prompt ids; `generate(do_sample=False, use_cache=True)` with exactly the
asked number of new tokens. Time to first token is a `generate` of one new token (the prefill and one sampling);
decode tokens/s is `batch · (new - 1)` over the full generation's time less that. The last line is
machine-readable: `ttft_ms=... decode_tokens_per_s=... torch=... transformers=...`.
"""

import argparse
import json
import time

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf-config", required=True)
    ap.add_argument("--prompt-tokens", type=int, required=True)
    ap.add_argument("--new-tokens", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1337)
    config = json.loads(args.hf_config)
    model_type = config.pop("model_type")
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **config)).eval()
    gen = torch.Generator().manual_seed(1337)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.prompt_tokens), generator=gen)
    mask = torch.ones_like(ids)

    def generate(n):
        start = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       use_cache=True, pad_token_id=0)
        return time.perf_counter() - start

    with torch.inference_mode():
        generate(2)  # warm-up
        ttft = generate(1)
        total = generate(args.new_tokens)
    decode = args.batch * (args.new_tokens - 1) / (total - ttft)
    print(f"ttft_ms={ttft * 1e3:.1f} decode_tokens_per_s={decode:.1f} torch={torch.__version__} "
          f"transformers={transformers.__version__}")


if __name__ == "__main__":
    main()
