//! Files that hold personal data or secrets: created readable by their owner alone
//! (0600), in directories only the owner may enter (0700).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Creates, or truncates, a file of mode 0600. An existing file keeps its inode but
/// is narrowed to 0600 too, so that an earlier, laxer copy is not left readable.
pub fn create_private(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        let f = opts.open(path)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        Ok(f)
    }
    #[cfg(not(unix))]
    opts.open(path)
}

/// Narrows an existing file (a database another library created) to mode 0600.
pub fn make_private(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Creates a directory (and its parents) of mode 0700; an existing one is left as it is.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(path)
}

/// Why a secret file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("readable by others (mode {0:o}); run chmod 600")]
    Permissions(u32),
    #[error("expected 32 bytes, found {0}")]
    Length(usize),
}

/// Writes a new secret file readable by its owner alone; never overwrites one. The
/// bytes go to a temporary file that is synced and then linked into place, so that a
/// crash or a full disk leaves either no file or a whole one, never a short one.
pub fn write_new_secret(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let written = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // A hard link never replaces an existing file, unlike a rename.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Reads a 32-byte secret, refusing a file others may read.
pub fn read_secret32(path: &Path) -> Result<[u8; 32], SecretError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::Permissions(mode));
        }
    }
    let bytes = std::fs::read(path)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| SecretError::Length(bytes.len()))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_and_directories_are_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        create_private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let f = dir.join("x.csv");
        std::fs::write(&f, "old").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_private(&f).unwrap();
        let mode = std::fs::metadata(&f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&f).unwrap(), b"");
    }
}
