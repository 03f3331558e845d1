//! One nkey user seed per role, kept in `<dir>/<role>.nk` (mode 0600) in the standard text
//! form (`SU…`) that `nats --nkey` and async-nats `ConnectOptions::nkey` read.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nkeys::KeyPair;

use crate::error::AuthError;
use crate::role::Role;

/// What happened to one role's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    /// There was none; a new one was written.
    Created,
    /// The existing one was kept.
    Kept,
    /// The existing one was replaced (`--rotate`).
    Rotated,
}

/// `<dir>/<role>.nk`.
pub fn seed_path(dir: &Path, role: Role) -> PathBuf {
    dir.join(role.key_file())
}

/// Reads the user key pair in `path`.
pub fn read_key(path: &Path) -> Result<KeyPair, AuthError> {
    let text = fs::read_to_string(path).map_err(|e| AuthError::io("reading a seed", path, e))?;
    let seed = text.trim();
    if !seed.starts_with("SU") {
        return Err(AuthError::BadSeed {
            path: path.to_owned(),
            reason: "not a user seed (it must start with SU)".to_owned(),
        });
    }
    KeyPair::from_seed(seed).map_err(|e| AuthError::BadSeed {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// The role's key pair from `dir`, created if absent or replaced when `rotate`.
pub fn ensure_key(
    dir: &Path,
    role: Role,
    rotate: bool,
) -> Result<(KeyPair, KeyOutcome), AuthError> {
    let path = seed_path(dir, role);
    let exists = path.exists();
    if exists && !rotate {
        let key = read_key(&path)?;
        // A key written by hand or copied in may be readable by others: tighten it.
        restrict(&path)?;
        return Ok((key, KeyOutcome::Kept));
    }
    let key = KeyPair::new_user();
    let seed = key
        .seed()
        .map_err(|e| AuthError::KeyGeneration(e.to_string()))?;
    write_private(&path, format!("{seed}\n").as_bytes())?;
    let outcome = if exists {
        KeyOutcome::Rotated
    } else {
        KeyOutcome::Created
    };
    Ok((key, outcome))
}

/// Writes `bytes` to `path` with mode 0600, through a temporary file and a rename so a
/// crash never leaves a half-written seed behind.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| AuthError::io("creating a private file", &tmp, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| AuthError::io("writing a private file", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| AuthError::io("moving a private file in place", path, e))
}

fn restrict(path: &Path) -> Result<(), AuthError> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        .map_err(|e| AuthError::io("restricting a seed to its owner", path, e))
}
