"""The Python baseline of the `prepare` benchmark (bench/README.md): Hugging Face `datasets` and `tokenizers`, as
nanoGPT's openwebtext/prepare.py does it, on a JSON Lines corpus with a given tokenizer.json.

    python bench/hf_prepare.py --input /tmp/corpus.jsonl --tokenizer data/tokenizer.json --out /tmp/hf-out

load_dataset("json") converts the corpus to an Arrow cache; map(batched=True, num_proc=N) tokenizes it
(tokenizer.encode_batch, no special tokens, then the end-of-text id after each document, as rustspeed does); the
ids are written as one uint16 (uint32 above 65536 ids) file `train.bin`. Times of each phase are printed. Needs
`pip install datasets tokenizers numpy`.
"""

import argparse
import os
import tempfile
import time

import numpy as np
from datasets import load_dataset
from tokenizers import Tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="JSON Lines corpus")
    parser.add_argument("--tokenizer", required=True, help="tokenizer.json (with <|endoftext|>)")
    parser.add_argument("--out", required=True, help="directory for train.bin")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1000, help="documents per map call (datasets' default)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cache = tempfile.mkdtemp(prefix="hf-cache-", dir=args.out)

    start = time.time()
    dataset = load_dataset("json", data_files=args.input, split="train", cache_dir=cache)
    loaded = time.time()

    tokenizer = Tokenizer.from_file(args.tokenizer)
    eot = tokenizer.token_to_id("<|endoftext|>")
    field = args.text_field

    def process(batch):
        encodings = tokenizer.encode_batch(batch[field], add_special_tokens=False)
        ids = [encoding.ids + [eot] for encoding in encodings]
        return {"ids": ids, "len": [len(x) for x in ids]}

    tokenized = dataset.map(
        process, batched=True, batch_size=args.batch_size, num_proc=args.num_proc, remove_columns=dataset.column_names
    )
    mapped = time.time()

    dtype = np.uint16 if tokenizer.get_vocab_size(with_added_tokens=True) <= 65536 else np.uint32
    total = int(np.sum(tokenized["len"], dtype=np.uint64))
    out = np.memmap(os.path.join(args.out, "train.bin"), dtype=dtype, mode="w+", shape=(total,))
    shards = max(1, min(1024, len(tokenized)))
    at = 0
    for index in range(shards):
        batch = tokenized.shard(num_shards=shards, index=index, contiguous=True).with_format("numpy")
        ids = np.concatenate(batch["ids"])
        out[at : at + len(ids)] = ids
        at += len(ids)
    out.flush()
    written = time.time()

    size = os.path.getsize(args.input)
    total_s = written - start
    print(
        f"{size / 1e6:.1f} MB, {len(dataset)} documents, {total} tokens: load {loaded - start:.1f}s, "
        f"map {mapped - loaded:.1f}s, write {written - mapped:.1f}s, total {total_s:.1f}s = {size / 1e6 / total_s:.2f} MB/s "
        f"(map alone {size / 1e6 / (mapped - loaded):.2f} MB/s)"
    )


if __name__ == "__main__":
    main()
