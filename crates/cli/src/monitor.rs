//! DeepSpeed's local monitors (semantics §1.10): `csv_monitor` and `tensorboard` log each optimizer step's scalars
//! against the global sample count, on rank 0, into `<output_path or RUN_DIR>/<job_name>/`.
//!
//! * csv_monitor: one file per scalar, `Train_Samples_train_loss.csv` for `Train/Samples/train_loss`, with the
//!   header `step,train_loss` (DeepSpeed's names: `/` → `_` in the file name, the last path component in the
//!   header). Values are written in Rust's shortest round-trip form. Lines end in `\n` (Python's csv module, which
//!   DeepSpeed uses, ends them in `\r\n`; every CSV reader takes both).
//! * tensorboard: one `events.out.tfevents.<secs>.<host>.<pid>.<n>` file per process, as PyTorch's
//!   `SummaryWriter` names it: TFRecord-framed protobuf `Event`s, first the file version, then one event per
//!   scalar.
//!
//! Scalars: `Train/Samples/train_loss`, `Train/Samples/lr`, `Train/Samples/loss_scale` (fp16 runs) and, a
//! rustspeed addition, `Train/Samples/val_loss` at the steps where validation ran.
//!
//! Resuming: what an interrupted run logged after its last checkpoint would otherwise appear twice (once from the
//! killed run, once from the resumed one), so [`Monitors::open`] drops every CSV row and every event after the
//! checkpoint's sample count from the files already there, rewriting each changed file whole (temporary name,
//! then rename). A resumed run's files then hold what an uninterrupted run's hold (TensorBoard's split over two
//! event files aside). A new run refuses a directory that already holds logged steps rather than mixing two runs
//! in one chart or deleting the other run's data.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;
use rustspeed_config::{DeepSpeedConfig, MonitorConfig};

const TRAIN_LOSS: &str = "Train/Samples/train_loss";
const LR: &str = "Train/Samples/lr";
const LOSS_SCALE: &str = "Train/Samples/loss_scale";
const VAL_LOSS: &str = "Train/Samples/val_loss";
/// Every scalar, in the order DeepSpeed logs them within a step (the loss in the backward, the rest in the step).
const SCALARS: [&str; 4] = [TRAIN_LOSS, LR, LOSS_SCALE, VAL_LOSS];

/// What TensorBoard's loaders look for at the start of an event file's name.
pub const EVENT_FILE_PREFIX: &str = "events.out.tfevents.";
/// The `file_version` of the first event of every event file (TensorFlow's current format).
const FILE_VERSION: &str = "brain.Event:2";

/// One optimizer step's events, as DeepSpeed's monitors log them (x-axis: global samples).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Samples trained on over all ranks, this step included (DeepSpeed's `global_samples`).
    pub global_samples: u64,
    /// The step's mean loss over its micro-batches.
    pub train_loss: f32,
    /// The learning rate the step used (parameter group 0).
    pub lr: f64,
    /// The fp16 loss scale; `None` without loss scaling (DeepSpeed logs it for fp16 only).
    pub loss_scale: Option<f64>,
    /// The validation loss, where validation ran after this step.
    pub val_loss: Option<f32>,
}

/// A scalar's value: f32 values are written with f32's shortest form (`2.5`, not the f64 expansion of it).
#[derive(Clone, Copy)]
enum Scalar {
    Single(f32),
    Double(f64),
}

impl Scalar {
    fn text(self) -> String {
        // `{:?}` writes the shortest string that reads back to the same value, with Python's switch to exponent
        // notation (below 1e-4, from 1e16), so the CSVs read like DeepSpeed's `repr` of each float.
        match self {
            Scalar::Single(x) => format!("{x:?}"),
            Scalar::Double(x) => format!("{x:?}"),
        }
    }

    /// TensorBoard's `simple_value` is a 32-bit float.
    fn single(self) -> f32 {
        match self {
            Scalar::Single(x) => x,
            Scalar::Double(x) => x as f32,
        }
    }
}

impl Event {
    fn scalars(&self) -> Vec<(&'static str, Scalar)> {
        let mut scalars = vec![(TRAIN_LOSS, Scalar::Single(self.train_loss)), (LR, Scalar::Double(self.lr))];
        if let Some(scale) = self.loss_scale {
            scalars.push((LOSS_SCALE, Scalar::Double(scale)));
        }
        if let Some(val) = self.val_loss {
            scalars.push((VAL_LOSS, Scalar::Single(val)));
        }
        scalars
    }
}

/// The enabled monitors of a run. Open it on rank 0 only (DeepSpeed's monitors write on rank 0); with no monitor
/// enabled every call does nothing.
pub struct Monitors {
    csv: Option<CsvMonitor>,
    tensorboard: Option<TensorBoard>,
    notes: Vec<String>,
}

impl Monitors {
    /// Opens the enabled monitors of `config` for a run in `run_dir` that resumes after `resumed_samples` global
    /// samples (0 for a fresh run).
    pub fn open(config: &DeepSpeedConfig, run_dir: &Path, resumed_samples: u64) -> Result<Monitors, String> {
        let mut notes = Vec::new();
        let csv = match config.csv_monitor.enabled {
            true => Some(CsvMonitor::open(&monitor_dir(&config.csv_monitor, run_dir), resumed_samples, &mut notes)?),
            false => None,
        };
        let tensorboard = match config.tensorboard.enabled {
            true => Some(TensorBoard::open(&monitor_dir(&config.tensorboard, run_dir), resumed_samples, &mut notes)?),
            false => None,
        };
        Ok(Monitors { csv, tensorboard, notes })
    }

    /// What opening changed in files already there (rows or events dropped after the resumed step, a torn last
    /// line), in words, for the run's log; empty when nothing was.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Logs one step's scalars to every enabled monitor. Each file is flushed to the operating system, so that
    /// TensorBoard or a `tail -f` sees the step at once; [`Monitors::sync`] puts it on disk.
    pub fn record(&mut self, event: &Event) -> Result<(), String> {
        let scalars = event.scalars();
        if let Some(csv) = &mut self.csv {
            csv.record(event.global_samples, &scalars)?;
        }
        if let Some(tensorboard) = &mut self.tensorboard {
            tensorboard.record(event.global_samples, &scalars)?;
        }
        Ok(())
    }

    /// Flushes and fsyncs every open file (called before each checkpoint commit, so that monitor files are as
    /// durable as checkpoints).
    pub fn sync(&mut self) -> Result<(), String> {
        if let Some(csv) = &mut self.csv {
            csv.sync()?;
        }
        if let Some(tensorboard) = &mut self.tensorboard {
            tensorboard.sync()?;
        }
        Ok(())
    }
}

/// The monitor directories of `config` that live inside `run_dir` (enabled, default `output_path`): files of the
/// run itself, which a run started over after stopping before its first checkpoint replaces.
pub fn run_owned_dirs(config: &DeepSpeedConfig, run_dir: &Path) -> Vec<PathBuf> {
    [&config.csv_monitor, &config.tensorboard]
        .into_iter()
        .filter(|m| m.enabled && m.output_path.is_empty())
        .map(|m| monitor_dir(m, run_dir))
        .collect()
}

/// `<output_path>/<job_name>`, with an empty `output_path` meaning the run directory (DeepSpeed: the current
/// directory, which would scatter the files of every run over wherever it was started).
fn monitor_dir(config: &MonitorConfig, run_dir: &Path) -> PathBuf {
    let base = if config.output_path.is_empty() { run_dir } else { Path::new(&config.output_path) };
    base.join(&config.job_name)
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

/// Creates `dir` and removes the hidden temporaries of rewrites that a killed run left there (TensorBoard reads
/// any file with "tfevents" in its name, hidden or not).
fn prepare_dir(dir: &Path, own_temporary: impl Fn(&str) -> bool) -> Result<(), String> {
    fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let entry = entry.map_err(|e| io_error(dir, e))?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp") && own_temporary(&n[1..])) {
            fs::remove_file(entry.path()).map_err(|e| io_error(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Puts a directory's entries (files created or renamed in it) on disk.
fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))
}

/// The error for a new run whose monitor file already holds logged steps.
fn not_a_new_run(path: &Path, what: &str, monitor: &str) -> String {
    format!(
        "{} already holds {what} of another run, and a new run does not overwrite them: give {monitor} another \
         output_path or job_name, or remove the file",
        path.display()
    )
}

// ---------------------------------------------------------------------------------------------------------------
// csv_monitor

/// DeepSpeed's file name for a scalar: `/` and spaces become `_`.
fn csv_file_name(name: &str) -> String {
    format!("{}.csv", name.replace(['/', ' '], "_"))
}

/// DeepSpeed's header: `step` and the scalar name's last path component.
fn csv_header(name: &str) -> String {
    format!("step,{}", name.rsplit('/').next().unwrap_or(name))
}

struct CsvFile {
    name: &'static str,
    path: PathBuf,
    /// Opened when the file exists (at open) or at the scalar's first value, as DeepSpeed creates them.
    writer: Option<BufWriter<File>>,
}

struct CsvMonitor {
    dir: PathBuf,
    files: Vec<CsvFile>,
    /// A file was created or replaced since the last sync, so the directory needs one too.
    dir_changed: bool,
}

/// An existing CSV file as read back: its rows' steps and lines, whether its last line was torn, and whether it
/// lacks a complete header (a run killed as it created the file).
struct CsvContent {
    rows: Vec<(u64, String)>,
    torn: bool,
    headless: bool,
}

/// Reads a monitor CSV file. A last line without its newline is torn (the run was killed while writing it) and is
/// dropped; any other line that is not `step,value` is an error naming its number, so that a damaged file is
/// never silently shortened.
fn read_csv(path: &Path, header: &str) -> Result<CsvContent, String> {
    let bytes = fs::read(path).map_err(|e| io_error(path, e))?;
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // `split` yields an empty last piece after a final newline; anything else there was cut short.
    let torn = lines.pop().is_some_and(|rest| !rest.is_empty());
    let Some((first, rest)) = lines.split_first() else {
        return Ok(CsvContent { rows: Vec::new(), torn, headless: true });
    };
    let text = |line: &[u8]| std::str::from_utf8(line).ok().map(|t| t.strip_suffix('\r').unwrap_or(t).to_string());
    if text(first).as_deref() != Some(header) {
        return Err(format!(
            "{}: line 1 is not the header '{header}'; remove the file or fix that line",
            path.display()
        ));
    }
    let mut rows = Vec::with_capacity(rest.len());
    for (i, line) in rest.iter().enumerate() {
        let parsed = text(line).and_then(|t| {
            let (step, value) = t.split_once(',')?;
            value.parse::<f64>().ok()?;
            Some((step.parse::<u64>().ok()?, t))
        });
        let row = parsed.ok_or_else(|| {
            let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
            format!(
                "{}: line {} is not a `step,value` row ('{shown}'); repair or remove that line, then rerun",
                path.display(),
                i + 2
            )
        })?;
        rows.push(row);
    }
    Ok(CsvContent { rows, torn, headless: false })
}

impl CsvMonitor {
    fn open(dir: &Path, resumed_samples: u64, notes: &mut Vec<String>) -> Result<CsvMonitor, String> {
        let file_names: Vec<String> = SCALARS.iter().map(|name| csv_file_name(name)).collect();
        prepare_dir(dir, |name| file_names.iter().any(|own| name.starts_with(&format!("{own}."))))?;
        let mut monitor = CsvMonitor { dir: dir.to_path_buf(), files: Vec::new(), dir_changed: true };
        for (name, file_name) in SCALARS.into_iter().zip(file_names) {
            let path = dir.join(file_name);
            let writer = match path.exists() {
                true => Some(truncate_csv(&path, &csv_header(name), resumed_samples, notes)?),
                false => None,
            };
            monitor.files.push(CsvFile { name, path, writer });
        }
        Ok(monitor)
    }

    fn record(&mut self, step: u64, scalars: &[(&'static str, Scalar)]) -> Result<(), String> {
        for &(name, value) in scalars {
            let Some(file) = self.files.iter_mut().find(|f| f.name == name) else { continue };
            if file.writer.is_none() {
                // `create_new`: the file was absent at open, and another writer's file is not to be replaced.
                let created = OpenOptions::new().write(true).create_new(true).open(&file.path);
                let mut writer = BufWriter::new(created.map_err(|e| io_error(&file.path, e))?);
                writeln!(writer, "{}", csv_header(name)).map_err(|e| io_error(&file.path, e))?;
                file.writer = Some(writer);
                self.dir_changed = true;
            }
            if let Some(writer) = &mut file.writer {
                writeln!(writer, "{step},{}", value.text())
                    .and_then(|()| writer.flush())
                    .map_err(|e| io_error(&file.path, e))?;
            }
        }
        Ok(())
    }

    fn sync(&mut self) -> Result<(), String> {
        for file in &mut self.files {
            if let Some(writer) = &mut file.writer {
                writer.flush().and_then(|()| writer.get_ref().sync_all()).map_err(|e| io_error(&file.path, e))?;
            }
        }
        if std::mem::take(&mut self.dir_changed) {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

/// Keeps the rows of an existing CSV file up to `resumed_samples` (rewriting it when that changes it) and opens
/// it for appending.
fn truncate_csv(
    path: &Path,
    header: &str,
    resumed_samples: u64,
    notes: &mut Vec<String>,
) -> Result<BufWriter<File>, String> {
    let content = read_csv(path, header)?;
    let total = content.rows.len();
    let kept: Vec<&str> =
        content.rows.iter().filter(|(step, _)| *step <= resumed_samples).map(|(_, line)| line.as_str()).collect();
    let dropped = total - kept.len();
    if resumed_samples == 0 && dropped > 0 {
        return Err(not_a_new_run(path, &format!("{dropped} logged row(s)"), "csv_monitor"));
    }
    if dropped > 0 {
        notes.push(format!(
            "{}: dropped {dropped} row(s) after global sample {resumed_samples}, which the checkpoint does not cover",
            path.display()
        ));
    }
    if content.torn {
        notes.push(format!("{}: dropped an incomplete last line (written when the run stopped)", path.display()));
    }
    if dropped > 0 || content.torn || content.headless {
        let mut text = format!("{header}\n");
        kept.iter().for_each(|line| text.push_str(&format!("{line}\n")));
        crate::atomic::write_atomically(path, text.as_bytes()).map_err(|e| io_error(path, e))?;
    }
    let file = OpenOptions::new().append(true).open(path).map_err(|e| io_error(path, e))?;
    Ok(BufWriter::new(file))
}

// ---------------------------------------------------------------------------------------------------------------
// tensorboard: TFRecord framing of protobuf messages (tensorflow/core/util/event.proto, summary.proto; only the
// fields written here; decoding skips the others)

/// `tensorflow.Event`. `file_version` and `summary` are members of a oneof, so they are optional.
#[derive(Clone, PartialEq, prost::Message)]
struct TfEvent {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<TfSummary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
struct TfSummary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<TfSummaryValue>,
}

/// `tensorflow.Summary.Value`. `simple_value` is a oneof member: optional, so that a 0.0 (a learning rate at the
/// start of a warm-up) is still written; proto3 would leave a plain 0.0 out, and TensorBoard would then see a value
/// of no kind and drop it.
#[derive(Clone, PartialEq, prost::Message)]
struct TfSummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
}

/// TFRecord's checksum: CRC-32C, rotated and offset so that a CRC of data holding CRCs stays well distributed.
fn masked_crc32c(bytes: &[u8]) -> u32 {
    // TensorFlow's `crc32c::Mask`: `((crc >> 15) | (crc << 17)) + 0xa282ead8`.
    crc32c::crc32c(bytes).rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Bytes of a TFRecord's framing around its data: length, the length's CRC, then after the data the data's CRC.
const RECORD_OVERHEAD: usize = 8 + 4 + 4;

/// One TFRecord: u64 little-endian length, masked CRC of those 8 bytes, the data, masked CRC of the data.
fn tf_record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(data.len() + RECORD_OVERHEAD);
    record.extend_from_slice(&length);
    record.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
    record.extend_from_slice(data);
    record.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    record
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Each record's byte range and its event's step, and where a torn last record starts.
type Records = (Vec<(std::ops::Range<usize>, i64)>, Option<usize>);

/// The records of an event file: each one's byte range in `bytes` and its event's step, and the offset of a
/// torn record at the end (cut short by a killed run), if any. A record whose checksums do not match, or whose
/// data is not an `Event`, is an error naming its offset: that is damage, not an interrupted write.
fn read_records(path: &Path, bytes: &[u8]) -> Result<Records, String> {
    let bad = |at: usize, what: &str| {
        format!("{}: the record at byte {at} {what}; the file is damaged (remove it, or move it away)", path.display())
    };
    let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes.len() - at < 12 {
            return Ok((records, Some(at)));
        }
        let length_bytes = &bytes[at..at + 8];
        if masked_crc32c(length_bytes) != word(at + 8) {
            return Err(bad(at, "has a wrong length checksum"));
        }
        let mut length = [0u8; 8];
        length.copy_from_slice(length_bytes);
        let length = u64::from_le_bytes(length);
        let end = usize::try_from(length)
            .ok()
            .and_then(|n| n.checked_add(at + RECORD_OVERHEAD))
            .filter(|&end| end <= bytes.len());
        let Some(end) = end else { return Ok((records, Some(at))) };
        let data = &bytes[at + 12..end - 4];
        if masked_crc32c(data) != word(end - 4) {
            return Err(bad(at, "has a wrong data checksum"));
        }
        let event = TfEvent::decode(data).map_err(|e| bad(at, &format!("is not a TensorFlow Event ({e})")))?;
        records.push((at..end, event.step));
        at = end;
    }
    Ok((records, None))
}

/// Drops the events after `resumed_samples` from an existing event file, rewriting it when that changes it.
fn truncate_event_file(path: &Path, resumed_samples: u64, notes: &mut Vec<String>) -> Result<(), String> {
    let bytes = fs::read(path).map_err(|e| io_error(path, e))?;
    let (records, torn) = read_records(path, &bytes)?;
    let limit = i64::try_from(resumed_samples).unwrap_or(i64::MAX);
    let kept: Vec<&std::ops::Range<usize>> =
        records.iter().filter(|(_, step)| *step <= limit).map(|(range, _)| range).collect();
    let dropped = records.len() - kept.len();
    if resumed_samples == 0 && dropped > 0 {
        return Err(not_a_new_run(path, &format!("{dropped} logged event(s)"), "tensorboard"));
    }
    if dropped > 0 {
        notes.push(format!(
            "{}: dropped {dropped} event(s) after global sample {resumed_samples}, which the checkpoint does not cover",
            path.display()
        ));
    }
    if let Some(at) = torn {
        notes.push(format!(
            "{}: dropped an incomplete last record of {} bytes (written when the run stopped)",
            path.display(),
            bytes.len() - at
        ));
    }
    if dropped > 0 || torn.is_some() {
        let text: Vec<u8> = kept.into_iter().flat_map(|range| bytes[range.clone()].iter().copied()).collect();
        crate::atomic::write_atomically(path, &text).map_err(|e| io_error(path, e))?;
    }
    Ok(())
}

/// This machine's name for the event file's name (PyTorch's `SummaryWriter` puts it there too), reduced to
/// characters that are safe in a file name.
fn host_name() -> String {
    let name = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .unwrap_or_default();
    let name: String =
        name.trim().chars().map(|c| if c.is_ascii_alphanumeric() || "-_".contains(c) { c } else { '_' }).collect();
    if name.is_empty() {
        "localhost".to_string()
    } else {
        name
    }
}

struct TensorBoard {
    dir: PathBuf,
    path: PathBuf,
    writer: BufWriter<File>,
    /// The event file is new since the last sync, so the directory needs one too.
    dir_changed: bool,
}

impl TensorBoard {
    fn open(dir: &Path, resumed_samples: u64, notes: &mut Vec<String>) -> Result<TensorBoard, String> {
        prepare_dir(dir, |name| name.starts_with(EVENT_FILE_PREFIX))?;
        let mut existing = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
            let entry = entry.map_err(|e| io_error(dir, e))?;
            if entry.file_name().to_str().is_some_and(|n| n.starts_with(EVENT_FILE_PREFIX)) {
                existing.push(entry.path());
            }
        }
        existing.sort();
        for path in &existing {
            truncate_event_file(path, resumed_samples, notes)?;
        }
        // PyTorch's name: seconds, host, process and a counter that makes it unique within the process.
        let stem = format!(
            "{EVENT_FILE_PREFIX}{:010}.{}.{}",
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            host_name(),
            std::process::id()
        );
        let (path, file) = (0..)
            .map(|n| dir.join(format!("{stem}.{n}")))
            .find_map(|path| match OpenOptions::new().write(true).create_new(true).open(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
                opened => Some(opened.map(|file| (path.clone(), file)).map_err(|e| io_error(&path, e))),
            })
            .unwrap_or_else(|| Err(io_error(dir, "no free event file name")))?;
        let mut tensorboard =
            TensorBoard { dir: dir.to_path_buf(), path, writer: BufWriter::new(file), dir_changed: true };
        let header =
            TfEvent { wall_time: wall_time(), step: 0, file_version: Some(FILE_VERSION.to_string()), summary: None };
        tensorboard.write(&[header])?;
        Ok(tensorboard)
    }

    fn write(&mut self, events: &[TfEvent]) -> Result<(), String> {
        for event in events {
            self.writer.write_all(&tf_record(&event.encode_to_vec())).map_err(|e| io_error(&self.path, e))?;
        }
        self.writer.flush().map_err(|e| io_error(&self.path, e))
    }

    fn record(&mut self, step: u64, scalars: &[(&'static str, Scalar)]) -> Result<(), String> {
        let step = i64::try_from(step).map_err(|_| io_error(&self.path, format!("step {step} exceeds int64")))?;
        let wall_time = wall_time();
        // One event per scalar, as DeepSpeed's `add_scalar` calls write them.
        let events: Vec<TfEvent> = scalars
            .iter()
            .map(|&(tag, value)| TfEvent {
                wall_time,
                step,
                file_version: None,
                summary: Some(TfSummary {
                    value: vec![TfSummaryValue { tag: tag.to_string(), simple_value: Some(value.single()) }],
                }),
            })
            .collect();
        self.write(&events)
    }

    fn sync(&mut self) -> Result<(), String> {
        self.writer.flush().and_then(|()| self.writer.get_ref().sync_all()).map_err(|e| io_error(&self.path, e))?;
        if std::mem::take(&mut self.dir_changed) {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}
