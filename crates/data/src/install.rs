//! Installing a prepared data directory atomically: what may be replaced, the staging directory beside the
//! output, and the final rename. An interrupted `prepare` leaves at most a hidden `.NAME.tmp-*` directory, never
//! an output directory that looks complete.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{io_error, DataError};
use crate::meta::META_FILE;

/// Refuses an input file that replacing `out_dir` would delete: the file, or the symbolic link naming it, inside
/// `out_dir` (or being `out_dir`). Paths are compared canonicalized (absolute, `..` and links resolved), so
/// relative spellings and links are seen through.
pub(crate) fn check_input_outside_output(input: &Path, out_dir: &Path) -> Result<(), DataError> {
    let Ok(out_canonical) = fs::canonicalize(out_dir) else {
        // No `out_dir` yet (or not reachable, which `check_output` reports): nothing of the input's is in it.
        return Ok(());
    };
    let target = fs::canonicalize(input).map_err(io_error("resolve the path of", input))?;
    // Where the name itself lives: a link inside `out_dir` would be deleted even if its target survives.
    let name_location = match (input.parent().filter(|p| !p.as_os_str().is_empty()), input.file_name()) {
        (Some(parent), Some(name)) => fs::canonicalize(parent).ok().map(|parent| parent.join(name)),
        (None, Some(name)) => fs::canonicalize(".").ok().map(|cwd| cwd.join(name)),
        _ => None,
    };
    let inside = |path: &Path| path.starts_with(&out_canonical);
    if inside(&target) || name_location.as_deref().is_some_and(inside) {
        return Err(DataError::InputInsideOutput {
            input: input.to_path_buf(),
            resolved: (target != input).then_some(target),
            out_dir: out_dir.to_path_buf(),
        });
    }
    Ok(())
}

/// What is at the output path before `prepare` installs its directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Existing {
    Nothing,
    EmptyDir,
    /// A prepared data set that `overwrite` allows replacing.
    Dataset,
}

pub(crate) fn check_output(out_dir: &Path, overwrite: bool) -> Result<Existing, DataError> {
    let metadata = match fs::symlink_metadata(out_dir) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Nothing),
        Err(source) => return Err(DataError::Io { action: "inspect", path: out_dir.to_path_buf(), source }),
    };
    if !metadata.is_dir() {
        return Err(DataError::BadFile {
            path: out_dir.to_path_buf(),
            problem: "exists and is not a directory; choose another output directory".to_string(),
        });
    }
    let mut entries = fs::read_dir(out_dir).map_err(io_error("list", out_dir))?;
    if entries.next().is_none() {
        return Ok(Existing::EmptyDir);
    }
    if !overwrite {
        return Err(DataError::OutputExists { path: out_dir.to_path_buf() });
    }
    if !out_dir.join(META_FILE).is_file() {
        return Err(DataError::OutputNotDataset { path: out_dir.to_path_buf() });
    }
    Ok(Existing::Dataset)
}

/// Distinguishes staging directories of one process; the process id distinguishes processes.
static STAGING_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A sibling path of `out_dir` named `.NAME.TAG-PID-N` that does not exist yet.
fn sibling_path(out_dir: &Path, tag: &str) -> PathBuf {
    let parent = out_dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = out_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".to_string());
    loop {
        let n = STAGING_COUNTER.fetch_add(1, Ordering::Relaxed);
        let candidate = parent.join(format!(".{name}.{tag}-{}-{n}", std::process::id()));
        if fs::symlink_metadata(&candidate).is_err() {
            return candidate;
        }
    }
}

/// The staging directory sits beside `out_dir` so the final rename stays on one file system.
pub(crate) fn create_staging_dir(out_dir: &Path) -> Result<PathBuf, DataError> {
    if let Some(parent) = out_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(io_error("create directory", parent))?;
    }
    let staging = sibling_path(out_dir, "tmp");
    fs::create_dir(&staging).map_err(io_error("create directory", &staging))?;
    Ok(staging)
}

/// Moves the complete staging directory to `out_dir`; a replaced data set is moved aside first and deleted
/// only once the new one is in place, so a failure leaves the old one (or nothing) rather than a mix.
pub(crate) fn install(staging: &Path, out_dir: &Path, existing: Existing) -> Result<(), DataError> {
    let rename = |from: &Path, to: &Path| fs::rename(from, to).map_err(io_error("rename into place", to));
    match existing {
        Existing::Nothing => rename(staging, out_dir),
        Existing::EmptyDir => {
            fs::remove_dir(out_dir).map_err(io_error("remove the empty directory", out_dir))?;
            rename(staging, out_dir)
        }
        Existing::Dataset => {
            let aside = sibling_path(out_dir, "old");
            rename(out_dir, &aside)?;
            if let Err(e) = rename(staging, out_dir) {
                let _ = fs::rename(&aside, out_dir);
                return Err(e);
            }
            fs::remove_dir_all(&aside).map_err(io_error("remove the replaced data set", &aside))
        }
    }
}

/// Flushes the directory entries (Unix); where directories cannot be opened this is skipped, the files
/// themselves were already flushed.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(handle) = fs::File::open(dir) {
        let _ = handle.sync_all();
    }
}
