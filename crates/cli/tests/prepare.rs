//! `rustspeed prepare` end to end on corpora of many documents: JSON Lines through a glob and gzip, shards of any
//! size training identically (and resuming exactly across them), and the errors a user meets, named.

mod common;

use common::*;
use std::io::Write;

/// Two JSON Lines files (one gzip-compressed) of short documents about foxes and dogs.
fn jsonl_corpus(sb: &Sandbox) -> String {
    let docs: Vec<String> = (0..600)
        .map(|i| match i % 3 {
            0 => format!("the quick brown fox {i} jumps over a lazy dog."),
            1 => "to be or not to be, said the dog.".to_string(),
            _ => format!("a lazy dog sleeps; the fox runs {}.", i % 10),
        })
        .map(|text| serde_json::json!({ "id": 1, "text": text }).to_string())
        .collect();
    let dir = sb.path("corpus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("part-0.jsonl"), docs[..300].join("\n")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(docs[300..].join("\n").as_bytes()).unwrap();
    std::fs::write(dir.join("part-1.jsonl.gz"), gz.finish().unwrap()).unwrap();
    format!("{}/part-*", dir.display())
}

#[test]
fn many_shards_train_and_resume_like_one() {
    let sb = Sandbox::new("prepare-shards");
    let pattern = jsonl_corpus(&sb);
    let (one, many) = (sb.path("one"), sb.path("many"));
    let out = ok(&rustspeed(&["prepare", "--input", &pattern, "--out", s(&one), "--val-docs", "60"]));
    assert!(out.contains("prepared 2 file(s)") && out.contains("540 documents, 1 shard(s)"), "{out}");
    let out = ok(&rustspeed(&[
        "prepare",
        "--input",
        &pattern,
        "--out",
        s(&many),
        "--val-docs",
        "60",
        "--shard-tokens",
        "1K",
    ]));
    assert!(out.contains("60 documents, split by documents"), "{out}");
    assert!(std::fs::read_dir(&many).unwrap().count() > 20, "many shard files");

    let config = sb.write("ds.json", CONFIG);
    let (a, b, c) = (sb.path("a"), sb.path("b"), sb.path("c"));
    ok(&rustspeed(&train_args(s(&config), s(&one), s(&a), "6")));
    ok(&rustspeed(&train_args(s(&config), s(&many), s(&b), "6")));
    assert_eq!(metrics_without_timing(&a), metrics_without_timing(&b), "the same batches from one shard or many");
    ok(&rustspeed(&train_args(s(&config), s(&many), s(&c), "4")));
    ok(&rustspeed(&[&train_args(s(&config), s(&many), s(&c), "6")[..], &["--resume"]].concat()));
    assert_eq!(metrics_without_timing(&a), metrics_without_timing(&c), "resumed across shards");
}

#[test]
fn prepare_errors_name_the_file_line_and_option() {
    let sb = Sandbox::new("prepare-errors");
    let input = sb.write("docs.jsonl", "{\"text\": \"fine\"}\n{\"body\": \"no text\"}\n");
    let out = sb.path("data");
    let o = s(&out);
    fails(&rustspeed(&["prepare", "--input", s(&input), "--out", o]), &["docs.jsonl: line 2", "no field \"text\""]);
    let ok_out =
        ok(&rustspeed(&["prepare", "--input", s(&input), "--out", o, "--skip-bad-lines", "--val-fraction", "0"]));
    assert!(ok_out.contains("1 bad records skipped"), "{ok_out}");
    let fresh = sb.path("fresh");
    let f = s(&fresh);
    fails(
        &rustspeed(&["prepare", "--input", s(&input), "--out", f, "--val-fraction", "0.1", "--val-docs", "3"]),
        &["not both"],
    );
    fails(&rustspeed(&["prepare", "--input", s(&input), "--out", f, "--shard-tokens", "0"]), &["--shard-tokens"]);
    fails(&rustspeed(&["prepare", "--input", s(&input), "--out", f, "--format", "csv"]), &["--format", "csv"]);
    fails(&rustspeed(&["prepare", "--out", f]), &["needs --input"]);
    fails(
        &rustspeed(&["prepare", "--input", &format!("{}/*.none", sb.dir.display()), "--out", f]),
        &["*.none", "holds no file"],
    );
    fails(
        &rustspeed(&["prepare", "--input", s(&input), "--out", f, "--tokenizer", "char", "--eot", "</s>"]),
        &["eot", "</s>"],
    );
    assert!(!fresh.exists(), "nothing is left by a failed prepare");
}
