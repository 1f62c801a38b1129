//! `metrics.csv`: one row per optimizer step, `val_loss` filled where validation ran; `loss_scale` is the fp16
//! loss scale the step's gradients carried (1 without loss scaling), `skipped` 1 for a step skipped on an fp16
//! overflow, and `overflow_layer` the layer whose gradients held inf/NaN first in the backward.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const HEADER: &str = "step,loss,lr,grad_norm,tokens_per_s,val_loss,loss_scale,skipped,overflow_layer";

/// One row of `metrics.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub step: u64,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f32,
    pub tokens_per_s: f64,
    pub val_loss: Option<f32>,
    pub loss_scale: f64,
    pub skipped: bool,
    pub overflow_layer: Option<String>,
}

impl Row {
    fn to_line(&self) -> String {
        let val = self.val_loss.map_or(String::new(), |v| format!("{v:.6}"));
        format!(
            "{},{:.6},{:.6e},{:.6},{:.1},{val},{},{},{}",
            self.step,
            self.loss,
            self.lr,
            self.grad_norm,
            self.tokens_per_s,
            self.loss_scale,
            self.skipped as u8,
            self.overflow_layer.as_deref().unwrap_or("")
        )
    }

    fn parse(line: &str) -> Option<Row> {
        let f: Vec<&str> = line.split(',').collect();
        // Rows of runs from before the precision columns have 6 fields: fp32, nothing skipped.
        if f.len() != 9 && f.len() != 6 {
            return None;
        }
        let extra = |i: usize| f.get(i).copied();
        Some(Row {
            step: f[0].parse().ok()?,
            loss: f[1].parse().ok()?,
            lr: f[2].parse().ok()?,
            grad_norm: f[3].parse().ok()?,
            tokens_per_s: f[4].parse().ok()?,
            val_loss: if f[5].is_empty() { None } else { Some(f[5].parse().ok()?) },
            loss_scale: extra(6).map_or(Some(1.0), |v| v.parse().ok())?,
            skipped: extra(7) == Some("1"),
            overflow_layer: extra(8).filter(|v| !v.is_empty()).map(str::to_string),
        })
    }
}

pub struct Metrics {
    path: PathBuf,
    file: File,
}

/// Reads the rows of a metrics file. A last line without its newline is a row torn by a killed run and is
/// dropped (the returned note says so); any other line that does not parse is an error naming its number, so
/// that a damaged file is never silently shortened.
pub fn read_rows(path: &Path) -> Result<(Vec<Row>, Option<String>), String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    // `split` yields an empty last piece after a final newline; anything else there was cut short.
    let torn = lines.pop().filter(|rest| !rest.is_empty());
    let mut rows = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let text = std::str::from_utf8(line).ok();
        if i == 0 {
            if text.is_some_and(|t| t.starts_with("step,loss,")) {
                continue;
            }
            return Err(format!("{}: line 1 is not the header '{HEADER}'", path.display()));
        }
        let row = text.and_then(Row::parse).ok_or_else(|| {
            let shown = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
            format!(
                "{}: line {} is not a metrics row ('{shown}'); repair or remove that line, then rerun",
                path.display(),
                i + 1
            )
        })?;
        rows.push(row);
    }
    let note = torn.map(|rest| {
        format!(
            "{}: dropped an incomplete last line of {} bytes (written when the run stopped)",
            path.display(),
            rest.len()
        )
    });
    Ok((rows, note))
}

impl Metrics {
    /// Opens `path` for a run that has completed `resumed_step` steps (0 for a new run): rows after that step
    /// (from an interrupted run) are dropped, so the file matches the checkpoint it continues from, and that
    /// version is on disk before training goes on. Returns what was dropped, in words.
    pub fn open(path: &Path, resumed_step: u64) -> Result<(Metrics, Vec<String>), String> {
        let mut notes = Vec::new();
        let mut keep = Vec::new();
        if resumed_step > 0 && !path.exists() {
            notes.push(format!("{} was missing; it starts again at step {}", path.display(), resumed_step + 1));
        } else if resumed_step > 0 {
            let (rows, torn) = read_rows(path)?;
            notes.extend(torn);
            let total = rows.len();
            keep = rows.into_iter().filter(|r| r.step <= resumed_step).collect();
            if keep.len() < total {
                notes.push(format!(
                    "{}: dropped {} row(s) after step {resumed_step}, which the checkpoint does not cover",
                    path.display(),
                    total - keep.len()
                ));
            }
        }
        let mut text = format!("{HEADER}\n");
        keep.iter().for_each(|r| text.push_str(&format!("{}\n", r.to_line())));
        crate::atomic::write_atomically(path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = OpenOptions::new().append(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((Metrics { path: path.to_path_buf(), file }, notes))
    }

    pub fn append(&mut self, row: &Row) -> Result<(), String> {
        writeln!(self.file, "{}", row.to_line()).map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// Puts every appended row on disk: called before a checkpoint commits, so that the rows up to its step
    /// survive whatever kills the run after it.
    pub fn sync(&mut self) -> Result<(), String> {
        self.file.sync_data().map_err(|e| format!("{}: {e}", self.path.display()))
    }

    pub fn rows(&self) -> Result<Vec<Row>, String> {
        read_rows(&self.path).map(|(rows, _)| rows)
    }
}
