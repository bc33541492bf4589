//! The export to a file: written through a temporary file beside it, renamed with its
//! manifest only once complete, so a reader never sees half a file.

use super::{ExportError, Manifest, Query, write_csv};
use crate::db::Db;
use chrono::Utc;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes the export to `path` through a temporary file renamed only on success, then
/// `path.manifest.json` the same way. On failure (a full disk, a file-size limit, the
/// database) and when the future is dropped (a stop signal), neither file is written
/// and no temporary file is left.
///
/// The temporary files are `.NAME.XXXXXX.tmp` beside `path`: unique, so two exports to
/// the same file never share one, and locked (flock) while an export writes them, so
/// the next export to the same file removes those a killed export left and never one
/// still being written.
pub async fn write_file(db: &Db, query: &Query, path: &Path) -> Result<Manifest, ExportError> {
    let tmp = temp_beside(path).map_err(ExportError::Write)?;
    let mut syncing = Syncing {
        file: tmp.as_file(),
        unsynced: 0,
    };
    let (totals, sha256) = write_csv(db, query, &mut syncing).await?;
    tmp.as_file().sync_all().map_err(ExportError::Write)?;
    let manifest = Manifest {
        file: path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        rows: totals.rows,
        sha256,
        totals,
        parameters: query.clone(),
        columns: query.level.columns().to_vec(),
        generated_at: Utc::now(),
    };
    let manifest_path = sibling(path, ".manifest.json");
    let manifest_tmp = temp_beside(&manifest_path).map_err(ExportError::Write)?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ExportError::Write(e.into()))?;
    (&mut manifest_tmp.as_file())
        .write_all(&json)
        .and_then(|()| manifest_tmp.as_file().sync_all())
        .map_err(ExportError::Write)?;
    // The manifest first: a CSV is never there without its manifest. If the CSV's
    // rename fails, the manifest goes too.
    manifest_tmp
        .persist(&manifest_path)
        .map_err(|e| ExportError::Write(e.error))?;
    if let Err(e) = tmp.persist(path) {
        let _ = std::fs::remove_file(&manifest_path);
        return Err(ExportError::Write(e.error));
    }
    Ok(manifest)
}

/// Bytes written between two requests that the disk catch up.
const SYNC_EVERY: usize = 32 << 20;

/// The export's file, synced as it grows: the disk writes while the rows stream, and
/// the `sync_all` before the rename finds little left to wait for.
struct Syncing<'a> {
    file: &'a std::fs::File,
    unsynced: usize,
}

impl Write for Syncing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n;
        if self.unsynced >= SYNC_EVERY {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// A new temporary file `.NAME.XXXXXX.tmp` beside `path`, locked, after removing the
/// ones of the same pattern that no export holds any more (a killed export's). The
/// directory's lock makes the removal and the creation one step for every export
/// into the directory, so a file just created is never taken for an abandoned one.
fn temp_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let prefix = temp_prefix(path);
    let guard = std::fs::File::open(dir)?;
    guard.lock()?;
    remove_abandoned_temps(dir, &prefix);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        // As File::create would: 0666 less the umask (tempfile's default is 0600).
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let tmp = builder.tempfile_in(dir)?;
    tmp.as_file().lock()?;
    drop(guard);
    Ok(tmp)
}

/// `.NAME.` for `path` = `DIR/NAME`.
fn temp_prefix(path: &Path) -> String {
    format!(
        ".{}.",
        path.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// Removes `PREFIX` + random letters + `.tmp` files in `dir` that no process holds.
fn remove_abandoned_temps(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(random) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix(".tmp"))
        else {
            continue;
        };
        if random.is_empty() || !random.chars().all(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        let Ok(file) = std::fs::File::open(entry.path()) else {
            continue;
        };
        // Held: an export is writing it. Free: its export died.
        if file.try_lock().is_ok() {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(
                    file = %entry.path().display(),
                    "removed a temporary file an interrupted export left"
                ),
                Err(e) => tracing::warn!(
                    file = %entry.path().display(),
                    error = %e,
                    "cannot remove a temporary file an interrupted export left"
                ),
            }
        }
    }
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_files_are_unique_locked_and_only_abandoned_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("costs.csv");
        let live = temp_beside(&out).unwrap();
        let other = temp_beside(&out).unwrap();
        assert_ne!(live.path(), other.path());
        let name = live.path().file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(".costs.csv.") && name.ends_with(".tmp"),
            "{name}"
        );
        // Abandoned: of our pattern and held by no one.
        let abandoned = dir.path().join(".costs.csv.Zx81Qa.tmp");
        std::fs::write(&abandoned, "half").unwrap();
        // Not ours: another file's, or not of the pattern.
        let others = [
            ".other.csv.Zx81Qa.tmp",
            "costs.csv.tmp",
            ".costs.csv.a-b.tmp",
        ];
        for name in others {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        drop(other);
        let third = temp_beside(&out).unwrap();
        assert!(!abandoned.exists());
        assert!(live.path().exists(), "a live export's file is kept");
        assert!(third.path().exists());
        for name in others {
            assert!(dir.path().join(name).exists(), "{name}");
        }
    }

    #[test]
    fn sibling_files_sit_beside_the_output() {
        assert_eq!(
            sibling(Path::new("/x/costs.csv"), ".manifest.json"),
            PathBuf::from("/x/costs.csv.manifest.json")
        );
    }
}
