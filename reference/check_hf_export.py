"""Checks rustspeed's `export --format hf` against transformers, as a user would load the export.

    RUSTSPEED_HF_CHECK_DIR=/tmp/hfcheck cargo test -p rustspeed --test llama -- --ignored write_exports_for_transformers
    python reference/check_hf_export.py /tmp/hfcheck

For each exported directory (a Llama and a GPT-2), `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load it unchanged; the tokenizer's ids for the recorded text must equal
rustspeed's, and transformers' logits (float32) must equal the logits rustspeed computed within 1e-4.
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
    ours = torch.tensor(expected["logits"]).reshape(logits.shape)
    diff = (logits - ours).abs().max().item()
    print(f"{path}: {type(model).__name__}, {len(ids)} tokens, max |logit difference| {diff:.2e}")
    assert diff <= LOGITS_ATOL, f"{path}: logits differ by {diff}"


def main():
    root = sys.argv[1]
    for name in sorted(os.listdir(root)):
        check(os.path.join(root, name))
    print("all exports load in transformers with rustspeed's ids and logits")


if __name__ == "__main__":
    main()
