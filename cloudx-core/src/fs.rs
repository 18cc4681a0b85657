//! Small filesystem helpers for the data folder: private folders and secret files.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};

/// Creates `path` and its parents; new folders are private to the owner (0700) because the data
/// folder holds secrets. An existing folder is left as it is.
pub(crate) fn create_private_dir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("cannot create the folder {}: {e}", path.display())))
}

/// Reads the secret stored at `path`, or creates it from `generate` with mode 0600.
///
/// Creation uses `O_EXCL`, so two processes starting at once on one data folder agree on one
/// secret: the loser of the race reads the winner's file.
pub(crate) fn read_or_create_secret(path: &Path, generate: impl FnOnce() -> Result<String>) -> Result<String> {
    let io_error = |what: &str, e: std::io::Error| {
        Error::new(ErrorKind::Unavailable, format!("cannot {what} {}: {e}", path.display()))
    };
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut file) => {
            let secret = match generate() {
                Ok(secret) => secret,
                Err(e) => {
                    // Leave no empty file behind for the next start to trip over.
                    let _ = std::fs::remove_file(path);
                    return Err(e);
                }
            };
            file.write_all(secret.as_bytes()).and_then(|()| file.sync_all()).map_err(|e| io_error("write", e))?;
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // The creator may still be writing: wait briefly for a complete secret.
            for _ in 0..50 {
                let secret = std::fs::read_to_string(path).map_err(|e| io_error("read", e))?;
                if !secret.trim().is_empty() {
                    return Ok(secret.trim().to_owned());
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(Error::new(
                ErrorKind::Unavailable,
                format!("the secret file {} is empty; delete it to generate a new one", path.display()),
            ))
        }
        Err(e) => Err(io_error("create", e)),
    }
}

/// 48 random bytes from the operating system, hex-encoded.
pub(crate) fn random_secret() -> Result<String> {
    let mut bytes = [0u8; 48];
    getrandom::fill(&mut bytes).map_err(|e| {
        Error::internal("the operating system's random source failed", std::io::Error::other(e.to_string()))
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn secret_is_created_private_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let first = read_or_create_secret(&path, random_secret).unwrap();
        assert_eq!(first.len(), 96);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = read_or_create_secret(&path, || unreachable!("must reuse the stored secret")).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn private_dir_is_0700() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b");
        create_private_dir(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
