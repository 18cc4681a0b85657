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

/// Removes `root` and everything under it, without following a symlink and without recursion:
/// one directory descriptor at a time (going back up through `..`), so that a tree a sandboxed
/// run made thousands of levels deep costs neither the stack nor thousands of descriptors.
/// What is gone already is not an error.
pub(crate) fn remove_tree(root: &Path) -> std::io::Result<()> {
    use nix::dir::{Dir, Type};
    use nix::fcntl::{AtFlags, OFlag, open, openat};
    use nix::sys::stat::Mode;
    use nix::unistd::{UnlinkatFlags, unlinkat};
    use std::os::fd::OwnedFd;
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut fd: OwnedFd = match open(root, dir_flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::Error::ENOENT) => return Ok(()),
        // A file or a symlink: removed as such.
        Err(nix::Error::ENOTDIR | nix::Error::ELOOP) => return std::fs::remove_file(root),
        Err(e) => return Err(e.into()),
    };
    // The names of the folders entered below `root`, to remove each from its parent.
    let mut names: Vec<std::ffi::CString> = Vec::new();
    loop {
        // Every entry but folders goes now; the first folder is entered.
        let mut enter = None;
        {
            let mut listing = Dir::from_fd(fd.try_clone()?)?;
            for entry in listing.iter() {
                let entry = entry?;
                let name = entry.file_name();
                if name == c"." || name == c".." {
                    continue;
                }
                let is_dir = match entry.file_type() {
                    Some(kind) => kind == Type::Directory,
                    None => nix::sys::stat::fstatat(&fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                        .is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR),
                };
                if is_dir {
                    enter = Some(name.to_owned());
                    break;
                }
                match unlinkat(&fd, name, UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(nix::Error::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        match enter {
            Some(name) => {
                fd = openat(&fd, name.as_c_str(), dir_flags, Mode::empty())?;
                names.push(name);
            }
            None => {
                let Some(name) = names.pop() else { break };
                let parent = openat(&fd, c"..", dir_flags, Mode::empty())?;
                fd = parent;
                match unlinkat(&fd, name.as_c_str(), UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(nix::Error::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    drop(fd);
    match std::fs::remove_dir(root) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn remove_tree_takes_deep_and_wide_trees_and_follows_no_symlink() {
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), "keep").unwrap();
        let root = base.path().join("t");
        // Deeper than PATH_MAX allows a path to be (5,000 levels of `d/`).
        let mut dir = std::fs::File::open(base.path()).unwrap();
        let mut names = vec!["t".to_string()];
        names.extend((0..5_000).map(|_| "d".to_string()));
        for name in &names {
            nix::sys::stat::mkdirat(&dir, name.as_str(), nix::sys::stat::Mode::S_IRWXU).unwrap();
            let fd =
                nix::fcntl::openat(&dir, name.as_str(), nix::fcntl::OFlag::O_RDONLY, nix::sys::stat::Mode::empty())
                    .unwrap();
            dir = std::fs::File::from(fd);
        }
        for i in 0..300 {
            std::fs::write(root.join(format!("f{i}")), "x").unwrap();
        }
        std::os::unix::fs::symlink(outside.path(), root.join("link")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        super::remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert_eq!(std::fs::read_to_string(outside.path().join("keep")).unwrap(), "keep");
        super::remove_tree(&root).unwrap();
    }

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
