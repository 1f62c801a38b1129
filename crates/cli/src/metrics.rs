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

/// Reads the rows of a metrics file (unparsable lines are skipped).
pub fn read_rows(path: &Path) -> Vec<Row> {
    fs::read_to_string(path).map(|t| t.lines().skip(1).filter_map(Row::parse).collect()).unwrap_or_default()
}

impl Metrics {
    /// Opens `path` for a run that has completed `resumed_step` steps: rows after that step (from an interrupted
    /// run) are dropped, so the file matches the checkpoint it continues from.
    pub fn open(path: &Path, resumed_step: u64) -> Result<Metrics, String> {
        let keep: Vec<Row> = read_rows(path).into_iter().filter(|r| r.step <= resumed_step).collect();
        let mut text = format!("{HEADER}\n");
        keep.iter().for_each(|r| text.push_str(&format!("{}\n", r.to_line())));
        let tmp = path.with_extension("csv.tmp");
        fs::write(&tmp, text).and_then(|_| fs::rename(&tmp, path)).map_err(|e| format!("{}: {e}", path.display()))?;
        let file = OpenOptions::new().append(true).open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Metrics { path: path.to_path_buf(), file })
    }

    pub fn append(&mut self, row: &Row) -> Result<(), String> {
        writeln!(self.file, "{}", row.to_line()).map_err(|e| format!("{}: {e}", self.path.display()))
    }

    pub fn rows(&self) -> Vec<Row> {
        read_rows(&self.path)
    }
}
