//! The end-of-text token: what separates documents in a prepared token stream.

/// The end-of-text token that `prepare` puts after every document, added as a special token (the last id) to the
/// char and BPE vocabularies rustspeed builds: GPT-2's spelling, so exports read as GPT-2-style tokenizers.
pub const EOT_TOKEN: &str = "<|endoftext|>";

/// Spellings of a document-end special token in published `tokenizer.json` files, looked for in this order
/// when no token is named: GPT-2/GPT-NeoX/Qwen, Llama 3, Llama 2/Mistral/T5, Gemma. Chat end-of-turn tokens
/// (`<|eot_id|>`, `<|im_end|>`) end a turn, not a document, and are not guessed.
pub const EOT_SPELLINGS: &[&str] = &["<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>"];
