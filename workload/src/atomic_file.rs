//! Crash-safe file writes (security invariant 7): write a temp file in the
//! target's directory with the final mode, fsync it, rename it over the
//! target, fsync the directory. A reader sees the old file or the new one,
//! never a torn one, and a secret is never readable by others, not even
//! briefly.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode for private keys and tokens.
pub const SECRET_MODE: u32 = 0o600;

/// Who owns a written file; `None` keeps the writer's uid or gid. Changing
/// the owner to another user needs root (or CAP_CHOWN).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owner {
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Atomically replaces `path` with `contents`, created with `mode`.
pub fn write(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    write_owned(path, contents, mode, Owner::default())
}

/// [`write`], with the file handed to `owner` before any content is
/// written, so the new owner never sees a partial file and nobody else
/// ever holds it with the final contents.
pub fn write_owned(path: &Path, contents: &[u8], mode: u32, owner: Owner) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut suffix = [0u8; 6];
    aws_lc_rs::rand::fill(&mut suffix).map_err(|_| io::Error::other("no randomness"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        suffix
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        if owner != Owner::default() {
            std::os::unix::fs::fchown(&f, owner.uid, owner.gid)?;
        }
        // create_new honours the umask, and chown may clear mode bits; set
        // the exact mode asked for.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_atomically_with_the_mode_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        write(&path, b"one", SECRET_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write(&path, b"two", 0o644).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files are left behind");
    }

    #[test]
    fn the_owner_asked_for_owns_the_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let me = fs::metadata(dir.path()).unwrap();
        // Our own uid and gid work without privileges.
        let own = Owner {
            uid: Some(me.uid()),
            gid: Some(me.gid()),
        };
        write_owned(&path, b"one", SECRET_MODE, own).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (me.uid(), me.gid()));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let other = Owner {
            uid: Some(65534),
            gid: Some(65534),
        };
        match write_owned(&path, b"two", SECRET_MODE, other) {
            Ok(()) => {
                // Root: the file changed hands, with the mode intact.
                let meta = fs::metadata(&path).unwrap();
                assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
                assert_eq!(meta.permissions().mode() & 0o777, 0o600);
                assert_eq!(fs::read(&path).unwrap(), b"two");
            }
            Err(e) => {
                // Not root: refused, and the old file is untouched.
                assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
                assert_eq!(fs::read(&path).unwrap(), b"one");
            }
        }
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files are left behind");
    }

    #[test]
    fn a_missing_directory_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let err = write(&dir.path().join("nope/key.pem"), b"x", SECRET_MODE).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
