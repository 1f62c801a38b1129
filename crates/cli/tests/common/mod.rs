//! What the binary's end-to-end tests share: a scratch directory with a small prepared corpus, running the
//! binary, and asserting clean successes and failures.
#![allow(dead_code)] // each test file uses its own part

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Sandbox {
    pub dir: PathBuf,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        let dir = std::env::temp_dir().join(format!("rustspeed-cli-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Sandbox { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        fs::write(&p, contents).unwrap();
        p
    }

    /// A prepared character-level dataset of a repetitive text (vocabulary of 16 characters).
    pub fn data(&self) -> PathBuf {
        let line = "the quick brown fox jumps over a lazy dog. ";
        let text: String = (0..400).map(|i| if i % 7 == 0 { "to be or not to be. " } else { line }).collect();
        let input = self.write("corpus.txt", text);
        let out = self.path("data");
        ok(&rustspeed(&["prepare", "--input", s(&input), "--out", s(&out)]));
        out
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn rustspeed(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rustspeed")).args(args).output().unwrap()
}

pub fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "rustspeed failed: {err}");
    String::from_utf8_lossy(&out.stdout).into_owned() + &err
}

/// Asserts a clean failure (exit code 1, an `error:` line containing every `needle`, no panic) and returns stderr.
pub fn fails(out: &Output, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected a failure, got success: {err}");
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "error lacks '{n}': {err}");
    }
    err
}

pub const CONFIG: &str = r#"{"train_batch_size": 4, "gradient_accumulation_steps": 2,
    "optimizer": {"type": "AdamW", "params": {"lr": 0.003, "weight_decay": 0.1}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 4, "warmup_max_lr": 0.003}}}"#;

pub fn train_args<'a>(config: &'a str, data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    let small = ["--seq-len", "16", "--eval-every", "2", "--eval-batches", "2", "--save-every", "3"];
    let mut a =
        vec!["train", "--model", "gpt-tiny", "--config", config, "--data", data, "--out", out, "--steps", steps];
    a.extend(small);
    a
}

pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dst = to.join(entry.file_name());
        match entry.file_type().unwrap().is_dir() {
            true => copy_dir(&entry.path(), &dst),
            false => drop(fs::copy(entry.path(), dst).unwrap()),
        }
    }
}

/// `metrics.csv` without the timing column, which differs between runs.
pub fn metrics_without_timing(run: &Path) -> Vec<String> {
    let text = fs::read_to_string(run.join("metrics.csv")).unwrap();
    text.lines()
        .map(|l| {
            let mut f: Vec<&str> = l.split(',').collect();
            f.remove(4);
            f.join(",")
        })
        .collect()
}
