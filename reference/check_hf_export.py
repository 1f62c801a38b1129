"""Checks rustspeed's `export --format hf` against transformers, as a user would load the export.

    RUSTSPEED_HF_CHECK_DIR=/tmp/hfcheck cargo test -p rustspeed --test llama -- --ignored write_exports_for_transformers
    python reference/check_hf_export.py /tmp/hfcheck

For each exported directory (a Llama and a GPT-2), `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load it unchanged; the tokenizer's ids for the recorded text must equal
rustspeed's, transformers' logits (float32) must equal the logits rustspeed computed within 1e-4, and its greedy
`generate` (with its cache) must give the tokens rustspeed's cached greedy decoding gives.
"""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

LOGITS_ATOL = 1e-4


def check(path):
    expected = json.load(open(os.path.join(path, "expected.json")))
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer(expected["text"])["input_ids"]
    assert ids == expected["ids"], f"{path}: ids {ids} != rustspeed's {expected['ids']}"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
        # The mask given explicitly: inferred from a pad id, it would mask every prompt token equal to that id.
        prompt = torch.tensor([ids])
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt),
                             max_new_tokens=len(expected["greedy"]), do_sample=False, pad_token_id=0)
    ours = torch.tensor(expected["logits"]).reshape(logits.shape)
    diff = (logits - ours).abs().max().item()
    assert diff <= LOGITS_ATOL, f"{path}: logits differ by {diff}"
    greedy = out[0, len(ids):].tolist()
    assert greedy == expected["greedy"], f"{path}: transformers' greedy {greedy} != rustspeed's {expected['greedy']}"
    print(f"{path}: {type(model).__name__}, {len(ids)} tokens, max |logit difference| {diff:.2e}, "
          f"the {len(greedy)} greedy tokens equal")


def main():
    root = sys.argv[1]
    for name in sorted(os.listdir(root)):
        check(os.path.join(root, name))
    print("all exports load in transformers with rustspeed's ids, logits and greedy tokens")


if __name__ == "__main__":
    main()
