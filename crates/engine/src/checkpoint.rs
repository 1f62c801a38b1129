//! Checkpoint directories: written atomically, verified on load.
//!
//! Layout under a checkpoint root (a run's `checkpoints/`):
//! ```text
//! latest                 the newest complete tag (text, no newline), replaced atomically
//! <tag>/manifest.json    everything that is not a tensor, plus a CRC-32 of every other file
//! <tag>/manifest.crc32   the manifest's own size and CRC-32 (a damaged manifest cannot vouch for itself)
//! <tag>/*.safetensors    tensors (model parameters, optimizer state)
//! ```
//! A tag is first written under a temporary name and renamed into place only when every file is on disk, and
//! `latest` moves after that; a crash at any point leaves the previous checkpoint intact and `latest` pointing
//! at a complete one.

use crate::error::EngineError;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the manifest inside a tag directory.
pub const MANIFEST: &str = "manifest.json";
/// Name of the manifest's own checksum inside a tag directory (format version 2 on).
pub const MANIFEST_SUM: &str = "manifest.crc32";
/// Name of the file that holds the newest tag.
pub const LATEST: &str = "latest";
/// The manifest's `format` value and version this build reads and writes.
pub const FORMAT: &str = "rustspeed-checkpoint";
pub const FORMAT_VERSION: u64 = 2;
/// Version 1 manifests (written before [`MANIFEST_SUM`] existed) still load, with their files' checksums only.
const LEGACY_VERSION: u64 = 1;

fn io_err(path: &Path, e: std::io::Error) -> EngineError {
    EngineError::Io(format!("{}: {e}", path.display()))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), EngineError> {
    let mut f = fs::File::create(path).map_err(|e| io_err(path, e))?;
    f.write_all(bytes).map_err(|e| io_err(path, e))?;
    f.sync_all().map_err(|e| io_err(path, e))
}

/// The directory a tag is written into before it is complete. Its name depends only on the tag, so that every
/// rank of a run (threads or processes) writes into the same one.
pub fn partial_dir(root: &Path, tag: &str) -> PathBuf {
    root.join(format!(".{tag}.partial"))
}

fn check_tag(tag: &str) -> Result<(), EngineError> {
    match tag.is_empty() || tag.contains(['/', '\\']) || tag.starts_with('.') {
        true => Err(EngineError::Checkpoint(format!("invalid checkpoint tag '{tag}'"))),
        false => Ok(()),
    }
}

/// Starts checkpoint `tag` under `root`: an empty partial directory. What crashed saves left behind (partial
/// tags, a tag moved aside while being replaced, a half-written `latest`) is removed first: the caller is the
/// run's only writer (the run directory's lock), so no other save can be in progress.
/// Files go in with [`write_file`] (from any rank); [`commit`] makes the tag visible.
pub fn begin(root: &Path, tag: &str) -> Result<PathBuf, EngineError> {
    check_tag(tag)?;
    fs::create_dir_all(root).map_err(|e| io_err(root, e))?;
    remove_leftovers(root)?;
    let tmp = partial_dir(root, tag);
    fs::create_dir(&tmp).map_err(|e| io_err(&tmp, e))?;
    Ok(tmp)
}

/// Whether `name` is something an interrupted save leaves under a checkpoint root: `.<tag>.partial`,
/// `.<tag>.old-<pid>` or `.latest.partial-<pid>`. Complete tags never start with a dot ([`check_tag`]).
fn is_leftover(name: &str) -> bool {
    name.starts_with('.')
        && (name.ends_with(".partial") || name.contains(".old-") || name.starts_with(&format!(".{LATEST}.partial-")))
}

fn remove_leftovers(root: &Path) -> Result<(), EngineError> {
    for entry in fs::read_dir(root).map_err(|e| io_err(root, e))? {
        let entry = entry.map_err(|e| io_err(root, e))?;
        let path = entry.path();
        if !entry.file_name().to_str().is_some_and(is_leftover) {
            continue;
        }
        let removed = match path.is_dir() {
            true => fs::remove_dir_all(&path),
            false => fs::remove_file(&path),
        };
        removed.map_err(|e| io_err(&path, e))?;
    }
    Ok(())
}

/// Writes one file of a partial checkpoint, synced to disk.
pub fn write_file(partial: &Path, name: &str, bytes: &[u8]) -> Result<(), EngineError> {
    write_synced(&partial.join(name), bytes)
}

/// Completes checkpoint `tag`: adds `format`, `version`, `tag` and the size and CRC-32 of each of `files` (read
/// back from the partial directory) to `manifest`, writes it, renames the directory into place and points
/// `latest` at it. Returns the tag directory.
pub fn commit(root: &Path, tag: &str, files: &[String], mut manifest: Value) -> Result<PathBuf, EngineError> {
    let tmp = partial_dir(root, tag);
    let mut checksums = BTreeMap::new();
    for name in files {
        let path = tmp.join(name);
        let bytes = fs::read(&path).map_err(|e| io_err(&path, e))?;
        checksums.insert(name.clone(), json!({ "crc32": crc32fast::hash(&bytes), "bytes": bytes.len() }));
    }
    manifest["format"] = json!(FORMAT);
    manifest["version"] = json!(FORMAT_VERSION);
    manifest["tag"] = json!(tag);
    manifest["checksums"] = json!(checksums);
    let text = serde_json::to_string_pretty(&manifest).expect("a JSON value serializes");
    write_synced(&tmp.join(MANIFEST), text.as_bytes())?;
    write_synced(&tmp.join(MANIFEST_SUM), manifest_sum(text.as_bytes()).as_bytes())?;

    let dst = root.join(tag);
    if dst.exists() {
        // Re-saving a tag: move the old one aside first so that a crash between the renames loses nothing.
        let old = root.join(format!(".{tag}.old-{}", std::process::id()));
        fs::rename(&dst, &old).map_err(|e| io_err(&dst, e))?;
        fs::rename(&tmp, &dst).map_err(|e| io_err(&tmp, e))?;
        fs::remove_dir_all(&old).map_err(|e| io_err(&old, e))?;
    } else {
        fs::rename(&tmp, &dst).map_err(|e| io_err(&tmp, e))?;
    }
    let latest_tmp = root.join(format!(".{LATEST}.partial-{}", std::process::id()));
    write_synced(&latest_tmp, tag.as_bytes())?;
    fs::rename(&latest_tmp, root.join(LATEST)).map_err(|e| io_err(&latest_tmp, e))?;
    Ok(dst)
}

/// The tag `latest` names, or an error saying there is no checkpoint to resume from.
pub fn latest_tag(root: &Path) -> Result<String, EngineError> {
    let path = root.join(LATEST);
    match fs::read_to_string(&path) {
        Ok(tag) if !tag.trim().is_empty() => Ok(tag.trim().to_string()),
        Ok(_) => Err(EngineError::Checkpoint(format!("{} is empty", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(EngineError::NoCheckpoint(format!("no checkpoint under {} (missing '{LATEST}')", root.display())))
        }
        Err(e) => Err(io_err(&path, e)),
    }
}

/// The content of [`MANIFEST_SUM`] for manifest bytes `text`.
fn manifest_sum(text: &[u8]) -> String {
    json!({ "crc32": crc32fast::hash(text), "bytes": text.len() }).to_string()
}

/// Checks the manifest's bytes against [`MANIFEST_SUM`] before anything in it is believed. Only a legacy
/// manifest may come without one, and only one that says it is legacy (no bit flip turns "2" into "1").
fn verify_manifest(dir: &Path, text: &[u8]) -> Result<bool, String> {
    let expected: Value = serde_json::from_str(&manifest_sum(text)).expect("the sum is JSON");
    match fs::read(dir.join(MANIFEST_SUM)) {
        Ok(sum) if serde_json::from_slice::<Value>(&sum).is_ok_and(|sum| sum == expected) => Ok(true),
        Ok(_) => Err(format!("{MANIFEST} fails its checksum in {MANIFEST_SUM} (damaged or edited)")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(format!("cannot read {MANIFEST_SUM}: {e}")),
    }
}

/// A checkpoint read back and verified.
pub struct Loaded {
    pub dir: PathBuf,
    pub manifest: Value,
    pub files: BTreeMap<String, Vec<u8>>,
}

/// Reads checkpoint `tag` under `root` and verifies the manifest's format and every file's size and CRC-32.
pub fn load(root: &Path, tag: &str) -> Result<Loaded, EngineError> {
    let dir = root.join(tag);
    let corrupt = |msg: String| EngineError::Checkpoint(format!("checkpoint {}: {msg}", dir.display()));
    let manifest_path = dir.join(MANIFEST);
    let text = fs::read(&manifest_path).map_err(|e| corrupt(format!("cannot read {MANIFEST}: {e}")))?;
    let summed = verify_manifest(&dir, &text).map_err(corrupt)?;
    let manifest: Value =
        serde_json::from_slice(&text).map_err(|e| corrupt(format!("{MANIFEST} is not valid JSON: {e}")))?;
    if manifest["format"] != FORMAT {
        return Err(corrupt(format!("{MANIFEST} is not a {FORMAT} manifest")));
    }
    match (manifest["version"].as_u64(), summed) {
        (Some(FORMAT_VERSION), true) | (Some(LEGACY_VERSION), _) => {}
        (Some(FORMAT_VERSION), false) => return Err(corrupt(format!("{MANIFEST_SUM} is missing"))),
        _ => {
            return Err(corrupt(format!(
                "format version {} is not one this build reads ({LEGACY_VERSION} or {FORMAT_VERSION})",
                manifest["version"]
            )))
        }
    }
    if manifest["tag"] != tag {
        return Err(corrupt(format!("{MANIFEST} names tag {}, not its directory's '{tag}'", manifest["tag"])));
    }
    let checksums = manifest["checksums"].as_object().ok_or_else(|| corrupt("manifest lists no checksums".into()))?;
    let mut files = BTreeMap::new();
    for (name, sum) in checksums {
        // Files live in the tag directory itself; a listed path elsewhere is not one of this checkpoint's.
        if name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(corrupt(format!("{MANIFEST} lists '{name}', which is not a file of the checkpoint")));
        }
        let path = dir.join(name);
        let bytes = fs::read(&path).map_err(|e| corrupt(format!("cannot read {name}: {e}")))?;
        if Some(bytes.len() as u64) != sum["bytes"].as_u64() {
            return Err(corrupt(format!(
                "{name} has {} bytes, the manifest says {} (truncated?)",
                bytes.len(),
                sum["bytes"]
            )));
        }
        if Some(crc32fast::hash(&bytes) as u64) != sum["crc32"].as_u64() {
            return Err(corrupt(format!("{name} fails its CRC-32 check (corrupted)")));
        }
        files.insert(name.clone(), bytes);
    }
    Ok(Loaded { dir, manifest, files })
}
