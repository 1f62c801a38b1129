//! Timings on the real corpus, `/work/shared/data/tinyshakespeare.txt` (1.1 MB); ignored by default because the
//! file lives outside the repository. Run with
//! `cargo test -p rustspeed-data --test tinyshakespeare -- --ignored --nocapture`.

mod common;

use std::path::Path;
use std::time::Instant;

use common::TempDir;
use rustspeed_data::{prepare, Dataset, Loader, PrepareOptions, Tokenizer, TokenizerSpec};

const CORPUS: &str = "/work/shared/data/tinyshakespeare.txt";

#[test]
#[ignore = "needs /work/shared/data/tinyshakespeare.txt; prints timings"]
fn prepare_tinyshakespeare_char_and_bpe() {
    let input = Path::new(CORPUS);
    let text = std::fs::read_to_string(input).expect("the corpus is readable");
    let tmp = TempDir::new("tinyshakespeare");
    for spec in [TokenizerSpec::Char, TokenizerSpec::Bpe { vocab_size: 2048 }] {
        let out = tmp.join(&format!("data-{}", spec.to_string().replace(':', "-")));
        let start = Instant::now();
        let report = prepare(&[input.to_path_buf()], &spec, &out, &PrepareOptions::default()).unwrap();
        let prepare_s = start.elapsed().as_secs_f64();

        let start = Instant::now();
        let dataset = Dataset::open(&out).unwrap();
        let open_ms = start.elapsed().as_secs_f64() * 1e3;
        let start = Instant::now();
        let tokenizer = Tokenizer::build(&spec, &text).unwrap();
        let build_s = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let ids = tokenizer.encode(&text).unwrap();
        let encode_s = start.elapsed().as_secs_f64();
        println!(
            "{spec}: prepare {prepare_s:.2} s (tokenizer build {build_s:.2} s, encode {encode_s:.2} s), open+verify \
             {open_ms:.1} ms; vocab {}, {} train + {} val tokens, {:.2} chars/token",
            report.vocab_size,
            report.train_tokens,
            report.val_tokens,
            text.chars().count() as f64 / ids.len() as f64
        );
        assert_eq!(dataset.tokenizer.decode(&ids).unwrap(), text, "round trip over the whole corpus");
        // One document: its tokens and the end-of-text token.
        assert_eq!(report.train_tokens + report.val_tokens, ids.len() as u64 + 1);
        if spec == TokenizerSpec::Char {
            assert_eq!(report.vocab_size, 66, "tiny shakespeare's well-known 65 characters and <|endoftext|>");
        } else {
            assert_eq!(report.vocab_size, 2048);
        }
        let mut loader = Loader::new(&dataset.val, 8, 256, 0, 0, 1).unwrap();
        let (mut tokens, mut targets) = (Vec::new(), Vec::new());
        loader.next_batch(&mut tokens, &mut targets);
        assert_eq!(&tokens[1..256], &targets[..255]);
    }
}
