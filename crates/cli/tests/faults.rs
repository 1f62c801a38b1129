//! What a hostile user or a flaky machine does to a run, end to end through the binary: damaged and edited
//! checkpoint manifests, kill -9 at random moments and right after checkpoint commits, damaged metrics, runs
//! killed before their first checkpoint, stale partial saves, a resume with another seed, and validation longer
//! than the collective timeout. Each must end in a clear error or an exact continuation, never a panic, an abort
//! or a changed file.

mod common;

use common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Address space a command under fuzzing may take: far above what a tiny model needs, far below what a size read
/// from a damaged manifest asks for, so that an allocation from an unchecked size aborts instead of succeeding.
const ADDRESS_SPACE_LIMIT: u64 = 4 << 30;

/// CRC-32 (IEEE 802.3, reflected), bit by bit: the test's own oracle for re-signing an edited manifest.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Runs the binary with its address space limited to [`ADDRESS_SPACE_LIMIT`].
fn limited(args: &[&str]) -> Output {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rustspeed"));
    cmd.args(args);
    // SAFETY: setrlimit is async-signal-safe and touches only the child between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: ADDRESS_SPACE_LIMIT, rlim_max: ADDRESS_SPACE_LIMIT };
            match libc::setrlimit(libc::RLIMIT_AS, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    cmd.output().unwrap()
}

/// Every file under `dir` with its bytes' CRC, to show that a refused command changed nothing (but for the
/// lock file, where a writer records its PID).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, u32> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<PathBuf, u32>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            match path.is_dir() {
                _ if path.ends_with(".lock") => {}
                true => walk(root, &path, files),
                false => drop(files.insert(path.strip_prefix(root).unwrap().into(), crc32(&fs::read(&path).unwrap()))),
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(root, root, &mut files);
    files
}

/// The manifest's leaves that a damaged or edited file can change: JSON pointers with the edits to try.
fn edits(manifest: &Value, thorough: bool) -> Vec<(String, Value)> {
    fn walk(v: &Value, at: String, out: &mut Vec<(String, Value)>, thorough: bool) {
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| walk(v, format!("{at}/{k}"), out, thorough)),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| walk(v, format!("{at}/{i}"), out, thorough)),
            Value::Number(n) => {
                let mut new = vec![Value::from(0u64), Value::from(u64::MAX)];
                if thorough {
                    // One flipped bit: the lowest one for a counter (the edit a real fault makes least visible).
                    match n.as_u64() {
                        Some(x) => new.extend([Value::from(x ^ 1), Value::from(x ^ (1 << 40))]),
                        None => new.push(Value::from(-n.as_f64().unwrap_or(1.0) - 1.0)),
                    }
                }
                out.extend(new.into_iter().filter(|x| x != v).map(|x| (at.clone(), x)));
            }
            Value::String(_) => out.push((at, Value::from("garbage\u{1}/.."))),
            Value::Bool(b) => out.push((at, Value::from(!b))),
            Value::Null => out.push((at, Value::from(1u64 << 62))),
        }
    }
    let mut out = Vec::new();
    walk(manifest, String::new(), &mut out, thorough);
    out
}

/// Writes `manifest` into `tag_dir`, and with `sign` also a matching `manifest.crc32` (an edit made as if by a
/// writer, which only the cross-checks can catch).
fn put_manifest(tag_dir: &Path, manifest: &Value, sign: bool) {
    let text = serde_json::to_string_pretty(manifest).unwrap();
    fs::write(tag_dir.join("manifest.json"), &text).unwrap();
    if sign {
        let sum = format!(r#"{{"bytes":{},"crc32":{}}}"#, text.len(), crc32(text.as_bytes()));
        fs::write(tag_dir.join("manifest.crc32"), sum).unwrap();
    }
}

/// A finished command on damaged input: success, or a clean error (exit code 1, an `error:` line) — never a
/// panic, an abort from an allocation, or a signal.
fn clean(out: &Output, what: &str) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code().is_some(), "{what}: killed by a signal: {err}");
    assert!(!err.contains("panicked") && !err.contains("memory allocation"), "{what}: {err}");
    if !out.status.success() {
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.starts_with("error: "), "{what}: {err}");
    }
    out.status.success()
}

/// A trained run to damage, and how to resume it.
struct Subject {
    run: PathBuf,
    data: PathBuf,
    resume: Vec<String>,
}

impl Subject {
    fn train(sb: &Sandbox, name: &str, config: &str, extra: &[&str]) -> Subject {
        let data = match sb.path("data").exists() {
            true => sb.path("data"),
            false => sb.data(),
        };
        let config = sb.write(&format!("{name}.json"), config);
        let run = sb.path(name);
        let mut args: Vec<String> =
            train_args(s(&config), s(&data), s(&run), "3").into_iter().map(String::from).collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&rustspeed(&refs));
        let mut resume = args.clone();
        let steps = resume.iter().position(|a| a == "--steps").unwrap() + 1;
        resume[steps] = "4".into();
        resume.push("--resume".into());
        Subject { run, data, resume }
    }

    fn tag_dir(&self) -> PathBuf {
        self.run.join("checkpoints/global_step3")
    }

    /// Applies every edit in turn (restoring the run between them) and runs the readers and, where `resume`,
    /// a resume against it. Returns how many command runs were checked.
    fn fuzz(&self, sb: &Sandbox, thorough: bool, resume_edits: &dyn Fn(&str) -> bool) -> usize {
        let tag = self.tag_dir();
        let original: Value = serde_json::from_slice(&fs::read(tag.join("manifest.json")).unwrap()).unwrap();
        let pristine = sb.path(&format!("{}-pristine", self.run.file_name().unwrap().to_str().unwrap()));
        copy_dir(&self.run, &pristine);
        let mut checked = 0;
        for (n, (pointer, value)) in edits(&original, thorough).into_iter().enumerate() {
            for sign in [false, true] {
                let mut edited = original.clone();
                *edited.pointer_mut(&pointer).unwrap() = value.clone();
                put_manifest(&tag, &edited, sign);
                let before = snapshot(&self.run);
                let what = |cmd: &str| {
                    format!("{cmd} with {pointer} = {value} ({})", if sign { "signed" } else { "unsigned" })
                };
                let out_file = sb.path(&format!("out-{n}-{sign}.safetensors"));
                let commands: [(&str, Vec<&str>); 4] = [
                    ("generate", vec!["generate", "--run", s(&self.run), "--prompt", "the ", "--tokens", "2"]),
                    (
                        "eval",
                        vec![
                            "eval",
                            "--run",
                            s(&self.run),
                            "--data",
                            s(&self.data),
                            "--seq-len",
                            "16",
                            "--max-tokens",
                            "64",
                        ],
                    ),
                    ("export", vec!["export", "--run", s(&self.run), "--out", s(&out_file)]),
                    ("consolidate", vec!["consolidate", s(&self.run), "--out", s(&out_file)]),
                ];
                for (name, args) in &commands {
                    let passed = clean(&limited(args), &what(name));
                    if !sign {
                        // An unsigned edit is caught by the manifest's own checksum, before anything is read.
                        assert!(!passed, "{} was accepted", what(name));
                    }
                    let _ = fs::remove_file(&out_file);
                    checked += 1;
                }
                assert_eq!(snapshot(&self.run), before, "a reader changed the run: {}", what("readers"));
                if !sign || resume_edits(&pointer) {
                    let args: Vec<&str> = self.resume.iter().map(String::as_str).collect();
                    let out = limited(&args);
                    let passed = clean(&out, &what("train --resume"));
                    assert!(sign || !passed, "{} was accepted", what("train --resume"));
                    match passed {
                        // An accepted edit must be one that changes nothing the continuation depends on; the run
                        // is put back for the next edit.
                        true => {
                            fs::remove_dir_all(&self.run).unwrap();
                            copy_dir(&pristine, &self.run);
                        }
                        false => assert_eq!(
                            snapshot(&self.run),
                            before,
                            "a refused resume changed files: {}",
                            what("resume")
                        ),
                    }
                    checked += 1;
                }
            }
        }
        put_manifest(&tag, &original, true);
        assert_eq!(snapshot(&self.run), snapshot(&pristine), "the run is restored");
        checked
    }
}

/// The manifest fields whose damage a resume must catch (sizes, counters, positions): every edit of them is
/// tried against `train --resume` in the default suite; the opt-in test tries all fields.
fn critical(pointer: &str) -> bool {
    [
        "/model/",
        "/counters/",
        "/optimizer/applied_steps",
        "/client_state/",
        "/partition_size",
        "/world_size",
        "/shards/0",
        "/tag",
        "/lr_scheduler/",
    ]
    .iter()
    .any(|p| pointer.starts_with(p))
}

/// A damaged manifest (every field zeroed, maxed, or garbled) is refused by its checksum; the same edits made
/// consistently (re-signed) are refused by the cross-checks or are harmless, and never crash a reader or a resume
/// or change a file. Checked on a single-rank fp32 run and on a two-rank ZeRO-3 bf16 run (shards, partitions).
#[test]
fn damaged_or_edited_manifests_are_refused_without_allocating_or_changing_files() {
    let sb = Sandbox::new("fuzz");
    let single = Subject::train(&sb, "single", CONFIG, &[]);
    let checked = single.fuzz(&sb, false, &critical);
    let stage3 = r#"{"train_batch_size": 4, "bf16": {"enabled": true}, "zero_optimization": {"stage": 3},
        "optimizer": {"type": "AdamW", "params": {"lr": 0.003}}}"#;
    let sharded = Subject::train(&sb, "sharded", stage3, &["--world-size", "2"]);
    let checked = checked + sharded.fuzz(&sb, false, &|p: &str| p.starts_with("/shards") || p.starts_with("/counters"));
    eprintln!("{checked} command runs on damaged manifests");
}

/// The whole matrix: every field, four edits each (0, max, two flipped bits, garbage), signed and unsigned,
/// against every reader (generate, eval, export, consolidate) and a resume.
#[test]
#[ignore = "several minutes: every manifest field against every command"]
fn every_manifest_field_against_every_command() {
    let sb = Sandbox::new("fuzz-all");
    let single = Subject::train(&sb, "single", CONFIG, &[]);
    let mut checked = single.fuzz(&sb, true, &|_: &str| true);
    let stage1 = r#"{"train_batch_size": 4, "fp16": {"enabled": true}, "zero_optimization": {"stage": 1},
        "optimizer": {"type": "AdamW", "params": {"lr": 0.003}}}"#;
    checked += Subject::train(&sb, "stage1", stage1, &["--world-size", "2"]).fuzz(&sb, true, &|_: &str| true);
    let stage3 = r#"{"train_batch_size": 4, "zero_optimization": {"stage": 3},
        "optimizer": {"type": "AdamW", "params": {"lr": 0.003}}}"#;
    checked += Subject::train(&sb, "stage3", stage3, &["--world-size", "2"]).fuzz(&sb, true, &|_: &str| true);
    eprintln!("{checked} command runs on damaged manifests");
}

/// How a trial stops a run.
#[derive(Clone, Copy, Debug)]
enum Kill {
    /// SIGKILL this long after the start.
    After(Duration),
    /// SIGKILL as soon as `latest` names a new checkpoint (the moment after a commit, before the next row).
    AfterCommit,
}

fn monitor_files(run: &Path) -> usize {
    snapshot(&run.join("DeepSpeedJobName")).len()
}

/// A small deterministic generator for the trials' kill times (xorshift64*).
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

const KILL_TRIAL_STEPS: &str = "24";

/// Runs `train` to completion in `run` as a user would after each crash (resume when a checkpoint exists, start
/// over when none does), killing it once per entry of `kills` first. Returns how many kills landed.
fn train_through_kills(base: &[&str], run: &Path, kills: &[Kill]) -> usize {
    let latest = run.join("checkpoints/latest");
    let args = |resume: bool| [base, if resume { &["--resume"][..] } else { &[][..] }].concat();
    let mut landed = 0;
    for kill in kills {
        let before = fs::read_to_string(&latest).ok();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rustspeed"))
            .args(args(latest.exists()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break; // finished (or failed, which the final run reports) before the kill
            }
            let due = match kill {
                Kill::After(t) => start.elapsed() >= *t,
                Kill::AfterCommit => fs::read_to_string(&latest).ok() != before,
            };
            if due {
                child.kill().unwrap();
                landed += 1;
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        child.wait().unwrap();
    }
    let last = rustspeed(&args(latest.exists()));
    if !last.status.success() {
        // Already complete: the last kill came after the final checkpoint.
        fails(&last, &["already has 24 steps"]);
    }
    landed
}

/// Trials of kill -9 at random moments and right after checkpoint commits: after resuming (or starting over),
/// `metrics.csv` equals the uninterrupted run's row for row, losses bit-identical (fp32).
fn kill_trials(name: &str, trials: u64) {
    let sb = Sandbox::new(name);
    let data = sb.data();
    // DeepSpeed's csv_monitor too: its files must be as crash-exact as metrics.csv.
    let monitored = CONFIG.trim_end().strip_suffix('}').unwrap().to_string() + r#", "csv_monitor": {"enabled": true}}"#;
    let config = sb.write("ds.json", monitored);
    let reference = sb.path("reference");
    let start = Instant::now();
    ok(&rustspeed(&train_args(s(&config), s(&data), s(&reference), KILL_TRIAL_STEPS)));
    let span = start.elapsed().as_micros() as u64;
    let expected = metrics_without_timing(&reference);
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15);
    let mut landed = 0;
    for trial in 0..trials {
        let run = sb.path(&format!("trial{trial}"));
        let kills: Vec<Kill> = (0..1 + trial % 3)
            .map(|k| match (trial + k) % 3 {
                0 => Kill::AfterCommit,
                _ => Kill::After(Duration::from_micros(dice.below(span))),
            })
            .collect();
        landed += train_through_kills(&train_args(s(&config), s(&data), s(&run), KILL_TRIAL_STEPS), &run, &kills);
        assert_eq!(
            metrics_without_timing(&run),
            expected,
            "trial {trial} ({kills:?}) differs from the uninterrupted run"
        );
        let monitor = |run: &Path| snapshot(&run.join("DeepSpeedJobName"));
        assert_eq!(monitor(&run), monitor(&reference), "trial {trial} ({kills:?}): csv_monitor files differ");
    }
    assert_eq!(monitor_files(&reference), 3, "train_loss, lr and val_loss");
    eprintln!("{trials} trials, {landed} kills landed");
    assert!(landed as u64 >= trials / 2, "too few kills landed to test anything");
}

#[test]
fn killed_runs_resume_to_the_uninterrupted_metrics() {
    kill_trials("kill", 3);
}

#[test]
#[ignore = "a few minutes: 30 kill trials"]
fn thirty_kill_trials() {
    kill_trials("kill30", 30);
}

/// A run killed before its first checkpoint cannot be resumed (the error says to start over) and is started over
/// by the same command without --resume; stale partial saves are cleaned by the next save; a resume with another
/// seed is refused.
#[test]
fn runs_stopped_early_partial_saves_and_seeds() {
    let sb = Sandbox::new("early");
    let data = sb.data();
    let config = sb.write("ds.json", CONFIG);
    let run = sb.path("run");
    // What a kill during the first save leaves: run files, a first row, a partial tag, no `latest`.
    ok(&rustspeed(&train_args(s(&config), s(&data), s(&run), "2")));
    fs::rename(run.join("checkpoints/global_step2"), run.join("checkpoints/.global_step2.partial")).unwrap();
    fs::remove_file(run.join("checkpoints/latest")).unwrap();
    let resume = |steps: &str, extra: &[&str]| {
        rustspeed(&[&train_args(s(&config), s(&data), s(&run), steps)[..], &["--resume"], extra].concat())
    };
    fails(&resume("4", &[]), &["saved no checkpoint", "without --resume"]);
    let started = ok(&rustspeed(&train_args(s(&config), s(&data), s(&run), "4")));
    assert!(started.contains("starting it over"), "{started}");
    let reference = sb.path("reference");
    ok(&rustspeed(&train_args(s(&config), s(&data), s(&reference), "4")));
    assert_eq!(metrics_without_timing(&run), metrics_without_timing(&reference));
    let leftovers: Vec<_> = fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "stale partial saves remain: {leftovers:?}");

    fails(&resume("5", &["--seed", "7"]), &["--seed 1337"]);
    ok(&resume("5", &["--seed", "1337"]));
}

/// A damaged `metrics.csv` is never silently shortened: a torn last line (what a kill leaves) is dropped with a
/// note, a damaged earlier line is an error naming its number, and nothing is rewritten then.
#[test]
fn damaged_metrics_are_named_or_repaired_visibly() {
    let sb = Sandbox::new("metrics");
    let data = sb.data();
    let config = sb.write("ds.json", CONFIG);
    let run = sb.path("run");
    let reference = sb.path("reference");
    ok(&rustspeed(&train_args(s(&config), s(&data), s(&run), "4")));
    // The last step of a run is validated, so the split run ends where the validation cadence (2) has one anyway.
    ok(&rustspeed(&train_args(s(&config), s(&data), s(&reference), "6")));
    let resume = || rustspeed(&[&train_args(s(&config), s(&data), s(&run), "6")[..], &["--resume"]].concat());
    let metrics = run.join("metrics.csv");
    let good = fs::read(&metrics).unwrap();

    let mut damaged = good.clone();
    let second_row = damaged.iter().enumerate().filter(|(_, &b)| b == b'\n').nth(1).unwrap().0 + 1;
    damaged[second_row + 2] = 0xFF;
    fs::write(&metrics, &damaged).unwrap();
    fails(&resume(), &["metrics.csv", "line 3"]);
    assert_eq!(fs::read(&metrics).unwrap(), damaged, "a refused resume rewrote the metrics");

    fs::write(&metrics, [&good[..], b"\xff"].concat()).unwrap();
    let out = ok(&resume());
    assert!(out.contains("incomplete last line"), "{out}");
    assert_eq!(metrics_without_timing(&run), metrics_without_timing(&reference));
}

/// Validation that takes longer than the collective timeout does not trip it: every rank validates, so no rank
/// waits in a timed collective while another validates alone.
#[test]
#[ignore = "tens of seconds: a validation set large enough to outlast a 1 s timeout"]
fn validation_longer_than_the_collective_timeout() {
    let sb = Sandbox::new("timeout");
    let text: String = (0..6000).map(|i| format!("line {i} of a corpus that is long enough. ")).collect();
    let input = sb.write("big.txt", text);
    let data = sb.path("big");
    ok(&rustspeed(&["prepare", "--input", s(&input), "--out", s(&data), "--val-fraction", "0.5"]));
    let config = sb.write("ds.json", r#"{"train_batch_size": 4, "optimizer": {"type": "Adam"}}"#);
    let run = sb.path("run");
    let start = Instant::now();
    let out = ok(&rustspeed(&[
        "train",
        "--model",
        "gpt-tiny",
        "--config",
        s(&config),
        "--data",
        s(&data),
        "--out",
        s(&run),
        "--steps",
        "2",
        "--eval-every",
        "1",
        "--eval-batches",
        "100000",
        "--world-size",
        "2",
        "--comm-timeout",
        "1",
    ]));
    let took = start.elapsed();
    assert!(took > Duration::from_secs(3), "validation too short to test the timeout ({took:?}): {out}");
}

/// A run whose tokenizer has more symbols than its model has token rows (files of two runs mixed) is refused by
/// `generate` with both counts, instead of reading rows that do not exist.
#[test]
fn a_tokenizer_larger_than_the_model_is_refused() {
    let sb = Sandbox::new("vocab");
    let data = sb.data();
    let config = sb.write("ds.json", CONFIG);
    let run = sb.path("run");
    ok(&rustspeed(&train_args(s(&config), s(&data), s(&run), "1")));
    let wide = sb.write("wide.txt", ('!'..='~').cycle().take(20_000).collect::<String>());
    let wide_data = sb.path("wide");
    ok(&rustspeed(&["prepare", "--input", s(&wide), "--out", s(&wide_data)]));
    fs::copy(wide_data.join("tokenizer_meta.json"), run.join("tokenizer/tokenizer_meta.json")).unwrap();
    fails(&rustspeed(&["generate", "--run", s(&run), "--prompt", "the "]), &["95 symbols", "29 token rows"]);
}
