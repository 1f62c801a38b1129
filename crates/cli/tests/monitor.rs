//! The csv_monitor and tensorboard writers (src/monitor.rs, compiled into this test as a module: the crate is a
//! binary). CSV files are compared with their exact text written out here; event files are decoded independently:
//! the TFRecord framing by hand, both checksums against a bitwise CRC-32C written here, the messages with test-local
//! prost structs built from TensorFlow's .proto field numbers, the first message also byte by byte.

#[path = "../src/atomic.rs"]
mod atomic;
#[path = "../src/monitor.rs"]
mod monitor;

use std::fs;
use std::path::{Path, PathBuf};

use monitor::{Event, Monitors, EVENT_FILE_PREFIX};
use prost::Message;
use rustspeed_config::DeepSpeedConfig;

struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn new(name: &str) -> Sandbox {
        let dir = std::env::temp_dir().join(format!("rustspeed-monitor-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Sandbox { dir }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn config(text: &str) -> DeepSpeedConfig {
    DeepSpeedConfig::from_json_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn event(global_samples: u64, train_loss: f32, lr: f64, loss_scale: Option<f64>, val_loss: Option<f32>) -> Event {
    Event { global_samples, train_loss, lr, loss_scale, val_loss }
}

/// Three fp16 steps of 8 samples: a warm-up learning rate starting at 0 (a value proto3 would leave out), a loss
/// scale halved at the last step, validation after the last step.
fn three_events() -> [Event; 3] {
    [
        event(8, 2.5, 0.0, Some(65536.0), None),
        event(16, 2.25, 3e-5, Some(65536.0), None),
        event(24, 2.0, 0.0003, Some(32768.0), Some(2.125)),
    ]
}

fn record_all(monitors: &mut Monitors, events: &[Event]) {
    for e in events {
        monitors.record(e).unwrap();
    }
    monitors.sync().unwrap();
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file of `dir` (names sorted) with its text.
fn csv_files(dir: &Path) -> Vec<(String, String)> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names.into_iter().map(|name| (name.clone(), read(&dir.join(name)))).collect()
}

fn expected_csv_files() -> Vec<(String, String)> {
    [
        ("Train_Samples_loss_scale.csv", "step,loss_scale\n8,65536.0\n16,65536.0\n24,32768.0\n"),
        ("Train_Samples_lr.csv", "step,lr\n8,0.0\n16,3e-5\n24,0.0003\n"),
        ("Train_Samples_train_loss.csv", "step,train_loss\n8,2.5\n16,2.25\n24,2.0\n"),
        ("Train_Samples_val_loss.csv", "step,val_loss\n24,2.125\n"),
    ]
    .map(|(name, text)| (name.to_string(), text.to_string()))
    .to_vec()
}

const CSV: &str = r#"{"csv_monitor": {"enabled": true}}"#;

#[test]
fn nothing_enabled_writes_nothing() {
    let sb = Sandbox::new("off");
    let run = sb.dir.join("run");
    let mut monitors = Monitors::open(&config(r#"{"csv_monitor": {"enabled": false}}"#), &run, 0).unwrap();
    record_all(&mut monitors, &three_events());
    assert!(monitors.take_notes().is_empty());
    assert!(!run.exists(), "no directory was created");
}

#[test]
fn csv_files_hold_deepspeeds_names_headers_and_the_values() {
    let sb = Sandbox::new("csv");
    let run = sb.dir.join("run");
    let mut monitors = Monitors::open(&config(CSV), &run, 0).unwrap();
    record_all(&mut monitors, &three_events());
    // output_path "" is the run directory; job_name defaults to DeepSpeed's.
    assert_eq!(csv_files(&run.join("DeepSpeedJobName")), expected_csv_files());

    // An fp32 run without validation writes no loss_scale or val_loss file, and a given output_path and job_name
    // place the files.
    let out = sb.dir.join("logs");
    let text =
        format!(r#"{{"csv_monitor": {{"enabled": true, "output_path": "{}", "job_name": "j1"}}}}"#, out.display());
    let mut monitors = Monitors::open(&config(&text), &run, 0).unwrap();
    record_all(&mut monitors, &[event(4, 1.5, 0.001, None, None)]);
    let expected =
        [("Train_Samples_lr.csv", "step,lr\n4,0.001\n"), ("Train_Samples_train_loss.csv", "step,train_loss\n4,1.5\n")]
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .to_vec();
    assert_eq!(csv_files(&out.join("j1")), expected);
}

#[test]
fn a_resumed_run_drops_the_rows_after_its_checkpoint_and_ends_like_an_uninterrupted_one() {
    let sb = Sandbox::new("csv-resume");
    let run = sb.dir.join("run");
    let events = three_events();
    // The killed run logged all three steps; its checkpoint covers 16 samples.
    record_all(&mut Monitors::open(&config(CSV), &run, 0).unwrap(), &events);
    let mut resumed = Monitors::open(&config(CSV), &run, 16).unwrap();
    let dir = run.join("DeepSpeedJobName");
    assert_eq!(read(&dir.join("Train_Samples_train_loss.csv")), "step,train_loss\n8,2.5\n16,2.25\n");
    assert_eq!(read(&dir.join("Train_Samples_val_loss.csv")), "step,val_loss\n");
    let notes = resumed.take_notes();
    assert_eq!(notes.len(), 4, "one row dropped from each file: {notes:?}");
    assert!(notes.iter().all(|n| n.contains("dropped 1 row(s) after global sample 16")), "{notes:?}");
    record_all(&mut resumed, &events[2..]);
    assert_eq!(csv_files(&dir), expected_csv_files());

    // Resuming where the files end changes nothing.
    let mut again = Monitors::open(&config(CSV), &run, 24).unwrap();
    assert!(again.take_notes().is_empty());
    assert_eq!(csv_files(&dir), expected_csv_files());

    // A new run does not overwrite logged rows.
    let error = Monitors::open(&config(CSV), &run, 0).err().unwrap();
    assert!(error.contains("Train_Samples_train_loss.csv already holds 3 logged row(s) of another run"), "{error}");
    assert_eq!(csv_files(&dir), expected_csv_files(), "nothing was changed");
}

#[test]
fn a_torn_last_csv_line_is_dropped_and_a_damaged_line_is_an_error_with_its_number() {
    let sb = Sandbox::new("csv-torn");
    let run = sb.dir.join("run");
    let dir = run.join("DeepSpeedJobName");
    fs::create_dir_all(&dir).unwrap();
    let loss = dir.join("Train_Samples_train_loss.csv");
    // Cut inside the value: "16,2.2" would parse, but a line without its newline was never finished.
    fs::write(&loss, "step,train_loss\n8,2.5\n16,2.2").unwrap();
    let mut monitors = Monitors::open(&config(CSV), &run, 16).unwrap();
    assert_eq!(read(&loss), "step,train_loss\n8,2.5\n");
    let notes = monitors.take_notes();
    assert!(notes.len() == 1 && notes[0].contains("incomplete last line"), "{notes:?}");
    record_all(&mut monitors, &[event(16, 2.25, 0.0, None, None)]);
    assert_eq!(read(&loss), "step,train_loss\n8,2.5\n16,2.25\n");

    // A header cut short by a kill as the file was created: rewritten with the whole header.
    fs::write(&loss, "step,tra").unwrap();
    Monitors::open(&config(CSV), &run, 16).unwrap();
    assert_eq!(read(&loss), "step,train_loss\n");

    let damaged = "step,train_loss\n8,2.5\n8;2.5\n16,2.25\n";
    fs::write(&loss, damaged).unwrap();
    let error = Monitors::open(&config(CSV), &run, 16).err().unwrap();
    assert!(
        error.contains(&loss.display().to_string()) && error.contains("line 3 is not a `step,value` row"),
        "{error}"
    );
    assert_eq!(read(&loss), damaged, "a damaged file is left as it is");
    fs::write(&loss, "step,loss\n8,2.5\n").unwrap();
    let error = Monitors::open(&config(CSV), &run, 16).err().unwrap();
    assert!(error.contains("line 1 is not the header 'step,train_loss'"), "{error}");
}

// ---------------------------------------------------------------------------------------------------------------
// tensorboard

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), one bit at a time.
fn crc32c_reference(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// TFRecord's mask, written as TensorFlow's crc32c.h writes it (the writer under test uses `rotate_right`).
#[allow(clippy::manual_rotate)]
fn masked(crc: u32) -> u32 {
    ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8)
}

#[test]
fn crc32c_matches_the_check_value() {
    assert_eq!(crc32c_reference(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
}

// tensorflow/core/util/event.proto and tensorflow/core/framework/summary.proto, the fields read here.
#[derive(Clone, PartialEq, prost::Message)]
struct PbEvent {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<PbSummary>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbSummary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<PbValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PbValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// The data of each TFRecord of an event file, both checksums verified.
fn records(path: &Path) -> Vec<Vec<u8>> {
    let bytes = fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let length_bytes = &rest[..8];
        let length = u64::from_le_bytes(length_bytes.try_into().unwrap()) as usize;
        let length_crc = u32::from_le_bytes(rest[8..12].try_into().unwrap());
        assert_eq!(length_crc, masked(crc32c_reference(length_bytes)), "{}: length checksum", path.display());
        let data = &rest[12..12 + length];
        let data_crc = u32::from_le_bytes(rest[12 + length..16 + length].try_into().unwrap());
        assert_eq!(data_crc, masked(crc32c_reference(data)), "{}: data checksum", path.display());
        out.push(data.to_vec());
        rest = &rest[16 + length..];
    }
    out
}

/// The event files of `dir`, in name order (which is creation order).
fn event_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.iter().all(|f| f.file_name().unwrap().to_str().unwrap().starts_with(EVENT_FILE_PREFIX)), "{files:?}");
    files
}

/// Each file's events: the file version first, then (step, tag, value) of each scalar.
fn scalars(path: &Path) -> Vec<(i64, String, f32)> {
    let events: Vec<PbEvent> = records(path).iter().map(|data| PbEvent::decode(&data[..]).unwrap()).collect();
    assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
    assert_eq!((events[0].step, &events[0].summary), (0, &None));
    events[1..]
        .iter()
        .map(|e| {
            let values = &e.summary.as_ref().expect("a summary").value;
            assert_eq!(values.len(), 1, "one scalar per event, as add_scalar writes them");
            (e.step, values[0].tag.clone(), values[0].simple_value.expect("a simple_value, even when 0.0"))
        })
        .collect()
}

fn expected_scalars() -> Vec<(i64, String, f32)> {
    let rows: [(i64, &str, f32); 10] = [
        (8, "train_loss", 2.5),
        (8, "lr", 0.0),
        (8, "loss_scale", 65536.0),
        (16, "train_loss", 2.25),
        (16, "lr", 3e-5),
        (16, "loss_scale", 65536.0),
        (24, "train_loss", 2.0),
        (24, "lr", 0.0003),
        (24, "loss_scale", 32768.0),
        (24, "val_loss", 2.125),
    ];
    rows.map(|(step, name, value)| (step, format!("Train/Samples/{name}"), value)).to_vec()
}

const TB: &str = r#"{"tensorboard": {"enabled": true, "job_name": "tb"}}"#;

#[test]
fn tensorboard_event_files_decode_to_the_scalars() {
    let sb = Sandbox::new("tb");
    let run = sb.dir.join("run");
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    record_all(&mut Monitors::open(&config(TB), &run, 0).unwrap(), &three_events());
    let after = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let files = event_files(&run.join("tb"));
    assert_eq!(files.len(), 1);
    assert_eq!(scalars(&files[0]), expected_scalars());
    let data = records(&files[0]);
    for record in &data {
        let wall_time = PbEvent::decode(&record[..]).unwrap().wall_time;
        assert!((before..=after).contains(&wall_time), "{before} <= {wall_time} <= {after}");
    }
    // The first event by hand: field 1 (wire type 1, 8 bytes) the wall time, no step (0 is proto3's default),
    // field 3 (wire type 2) the 13-byte file version.
    let first = &data[0];
    assert_eq!(first.len(), 1 + 8 + 2 + 13);
    assert_eq!(first[0], (1 << 3) | 1);
    assert_eq!(&first[9..11], &[(3 << 3) | 2, 13]);
    assert_eq!(&first[11..], b"brain.Event:2");
}

#[test]
fn a_resumed_tensorboard_run_drops_the_events_after_its_checkpoint() {
    let sb = Sandbox::new("tb-resume");
    let run = sb.dir.join("run");
    let dir = run.join("tb");
    let events = three_events();
    record_all(&mut Monitors::open(&config(TB), &run, 0).unwrap(), &events);
    let killed = event_files(&dir).remove(0);
    let mut resumed = Monitors::open(&config(TB), &run, 16).unwrap();
    assert_eq!(scalars(&killed), expected_scalars()[..6].to_vec());
    let notes = resumed.take_notes();
    assert!(notes.len() == 1 && notes[0].contains("dropped 4 event(s) after global sample 16"), "{notes:?}");
    record_all(&mut resumed, &events[2..]);
    let files = event_files(&dir);
    assert_eq!(files.len(), 2, "the resumed process writes its own file");
    let all: Vec<_> = files.iter().flat_map(|f| scalars(f)).collect();
    assert_eq!(all, expected_scalars(), "the two files together hold the uninterrupted run's events");

    // A new run does not mix its events with another run's.
    let error = Monitors::open(&config(TB), &run, 0).err().unwrap();
    assert!(error.contains("already holds 6 logged event(s) of another run"), "{error}");
    assert_eq!(event_files(&dir), files, "no file was created");
}

#[test]
fn a_torn_last_record_is_dropped_and_a_damaged_one_is_an_error_with_its_offset() {
    let sb = Sandbox::new("tb-torn");
    let run = sb.dir.join("run");
    let dir = run.join("tb");
    record_all(&mut Monitors::open(&config(TB), &run, 0).unwrap(), &three_events());
    let file = event_files(&dir).remove(0);
    let whole = fs::read(&file).unwrap();
    let sizes: Vec<usize> = records(&file).iter().map(|data| data.len() + 16).collect();
    let second = sizes[0];

    // Cut inside the last record (the val_loss event at 24): it is dropped, the rest kept byte for byte.
    let last = sizes[sizes.len() - 1];
    fs::write(&file, &whole[..whole.len() - 5]).unwrap();
    let mut monitors = Monitors::open(&config(TB), &run, 24).unwrap();
    assert_eq!(fs::read(&file).unwrap(), &whole[..whole.len() - last]);
    let notes = monitors.take_notes();
    assert!(
        notes.len() == 1 && notes[0].contains(&format!("incomplete last record of {} bytes", last - 5)),
        "{notes:?}"
    );
    drop(monitors);
    for extra in event_files(&dir).into_iter().filter(|f| *f != file) {
        fs::remove_file(extra).unwrap();
    }

    // One flipped bit in the data of the second record: an error naming the file and the record's offset.
    let mut damaged = whole.clone();
    damaged[second + 12] ^= 0x10;
    fs::write(&file, &damaged).unwrap();
    let error = Monitors::open(&config(TB), &run, 24).err().unwrap();
    assert!(error.contains(&file.display().to_string()), "{error}");
    assert!(error.contains(&format!("record at byte {second} has a wrong data checksum")), "{error}");
    assert_eq!(fs::read(&file).unwrap(), damaged, "a damaged file is left as it is");
    assert_eq!(event_files(&dir), vec![file], "no file was created");
}

/// The directories a run started over may replace are only the enabled monitors' with the default output_path
/// (inside the run directory), never a user-chosen one.
#[test]
fn only_monitor_directories_inside_the_run_are_the_runs_own() {
    let run = Path::new("/runs/a");
    let both = config(
        r#"{"train_batch_size": 1, "csv_monitor": {"enabled": true, "job_name": "j"},
        "tensorboard": {"enabled": true, "output_path": "/shared/tb"}}"#,
    );
    assert_eq!(monitor::run_owned_dirs(&both, run), vec![run.join("j")]);
    let none = config(r#"{"train_batch_size": 1, "csv_monitor": {"enabled": false}}"#);
    assert!(monitor::run_owned_dirs(&none, run).is_empty());
}
