//! Atomic outputs: everything is written to a temporary file or folder
//! beside the target and renamed into place only when complete, so a failed
//! run leaves nothing behind.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use crate::error::{FormatError, Result};

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Refuses to write over an input. Both paths may not exist yet.
pub fn check_not_input(output: &Path, inputs: &[&Path]) -> Result<()> {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    let out = canon(output);
    for input in inputs {
        let same = match (&out, canon(input)) {
            (Some(a), Some(b)) => *a == b || a.starts_with(&b) && input.is_dir(),
            _ => false,
        };
        if same {
            return Err(FormatError::invalid(
                output,
                "the output path is the input; choose another output",
            ));
        }
    }
    Ok(())
}

/// Writes a file through `write`, then renames it to `path`.
pub fn write_file_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let dir = parent_of(path);
    let tmp = tempfile::Builder::new()
        .prefix(".edgec-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| FormatError::io(&dir, e))?;
    let mut w = BufWriter::with_capacity(
        1 << 20,
        tmp.as_file()
            .try_clone()
            .map_err(|e| FormatError::io(path, e))?,
    );
    write(&mut w)?;
    drop(w);
    tmp.as_file()
        .sync_all()
        .map_err(|e| FormatError::io(path, e))?;
    set_mode(tmp.path(), 0o644)?;
    tmp.persist(path)
        .map_err(|e| FormatError::io(path, e.error))?;
    Ok(())
}

/// Fills a temporary folder through `write`, then renames it to `path`,
/// which must not exist or be an empty folder.
pub fn write_dir_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if path.exists() {
        let empty = path.is_dir()
            && std::fs::read_dir(path)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
        if !empty {
            return Err(FormatError::invalid(
                path,
                "the output folder exists and is not empty",
            ));
        }
    }
    let dir = parent_of(path);
    let tmp = tempfile::Builder::new()
        .prefix(".edgec-")
        .tempdir_in(&dir)
        .map_err(|e| FormatError::io(&dir, e))?;
    write(tmp.path())?;
    set_mode(tmp.path(), 0o755)?;
    for entry in std::fs::read_dir(tmp.path()).map_err(|e| FormatError::io(path, e))? {
        let entry = entry.map_err(|e| FormatError::io(path, e))?;
        if entry.path().is_file() {
            set_mode(&entry.path(), 0o644)?;
        }
    }
    if path.exists() {
        std::fs::remove_dir(path).map_err(|e| FormatError::io(path, e))?;
    }
    let tmp_path = tmp.keep();
    std::fs::rename(&tmp_path, path).map_err(|e| {
        let _ = std::fs::remove_dir_all(&tmp_path);
        FormatError::io(path, e)
    })
}

/// Temporary files are created private (0600); finished outputs get the
/// usual permissions of a file the user created.
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| FormatError::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}
