//! The HS256 signing key when `--jwt-secret` is not given: 32 random bytes
//! (64 hex characters) kept in `DATA_DIR/jwt_secret`, so tokens survive
//! restarts.
//!
//! The file is created whole or not at all (written to a temporary file,
//! synced, then renamed), so a crash can never leave an empty key behind.
//! An existing file is refused, with a clear line, when it is empty, too
//! short, or readable by other users: a key anyone on the machine can read
//! lets them mint tokens for any user.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{bail, Context};

pub const FILE_NAME: &str = "jwt_secret";
/// A kept key is at least this long (a generated one is 64).
pub const SECRET_CHARS_MIN: usize = 32;

pub fn load_or_create(dir: &Path) -> anyhow::Result<Vec<u8>> {
    let path = dir.join(FILE_NAME);
    match std::fs::metadata(&path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "{} is readable or writable by other users (mode {mode:o}): run `chmod 600 {}`",
                    path.display(),
                    path.display()
                );
            }
            let secret = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let secret = secret.trim_ascii().to_vec();
            if secret.len() < SECRET_CHARS_MIN {
                bail!(
                    "{} holds {} characters, fewer than {SECRET_CHARS_MIN}: delete it to have a new key \
                     generated (every issued token becomes invalid), or write a longer one",
                    path.display(),
                    secret.len()
                );
            }
            Ok(secret)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(dir, &path),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn create(dir: &Path, path: &Path) -> anyhow::Result<Vec<u8>> {
    let secret: [u8; 32] = rand::random();
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!("{FILE_NAME}.tmp-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(hex.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    std::fs::File::open(dir)?.sync_all()?; // the rename itself is durable
    Ok(hex.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_created_once_with_mode_600_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        let mode = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), first, "kept across restarts");
        let leftovers: Vec<_> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n != FILE_NAME).collect();
        assert!(leftovers.is_empty(), "no temporary file left: {leftovers:?}");
    }

    #[test]
    fn an_empty_short_or_exposed_key_is_refused_with_a_clear_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let write = |content: &str, mode: u32| {
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write("", 0o600);
        assert!(load_or_create(dir.path()).unwrap_err().to_string().contains("fewer than 32"));
        write("short", 0o600);
        assert!(load_or_create(dir.path()).unwrap_err().to_string().contains("delete it"));
        write(&"a".repeat(64), 0o644);
        assert!(load_or_create(dir.path()).unwrap_err().to_string().contains("chmod 600"));
        write(&"a".repeat(64), 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap(), "a".repeat(64).into_bytes());
    }
}
