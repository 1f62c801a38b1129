//! Output files that appear whole or not at all: written under a temporary name beside their place, flushed to
//! disk, then renamed into place.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

/// Hidden sibling of `path` for the in-progress write; the process id keeps two concurrent runs from sharing one.
fn temporary_sibling(path: &Path) -> io::Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file path"))?;
    let mut temporary = OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".{}.tmp", std::process::id()));
    Ok(path.with_file_name(temporary))
}

/// Writes `bytes` to a temporary sibling, flushes it to disk, and renames it over `path`: a rename within one
/// directory is atomic, so a crash leaves either the old file or the new one, never a truncated one.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temporary = temporary_sibling(path)?;
    let written = write_and_sync(&temporary, bytes)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", temporary.display())))
        .and_then(|()| {
            std::fs::rename(&temporary, path)
                .map_err(|e| io::Error::new(e.kind(), format!("renaming {} into place: {e}", temporary.display())))
        });
    if written.is_err() {
        // Best effort: the write already failed, and a leftover hidden file is harmless next to that error.
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Without the sync, a crash soon after the rename can leave the new name pointing at not-yet-written blocks.
fn write_and_sync(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}
