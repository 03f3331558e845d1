//! NATS identities for the shop: one nkey user per role, its rights computed from the
//! event contract, and the nats-server `authorization` block that enforces them.
//!
//! `shop auth init --dir DIR` calls [`init`]: it keeps (or with `--rotate` replaces) one
//! seed per role in `DIR/<role>.nk` and writes `DIR/auth.conf` for nats-server to include.
//! `docs/SECURITY.md` holds the table of rights ([`rights_table`]), the threat model and
//! how to rotate keys.

pub mod conf;
pub mod error;
pub mod keys;
pub mod protocol;
pub mod rights;
pub mod role;
pub mod table;

use std::path::{Path, PathBuf};

pub use error::AuthError;
pub use keys::{seed_path, KeyOutcome};
pub use rights::{rights, Rights};
pub use role::Role;
pub use table::rights_table;

/// The authorization block's file name in an auth directory.
pub const AUTH_CONF: &str = "auth.conf";

/// What [`init`] did, per role.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub dir: PathBuf,
    /// Each role with its public key and what happened to its seed.
    pub keys: Vec<(Role, String, KeyOutcome)>,
}

impl InitReport {
    /// `DIR/auth.conf`.
    pub fn auth_conf(&self) -> PathBuf {
        self.dir.join(AUTH_CONF)
    }
}

/// Writes (or keeps) every role's seed under `dir` and writes `dir/auth.conf` from them.
/// The block is always rewritten, so it follows the contract after an upgrade.
pub fn init(dir: &Path, rotate: bool) -> Result<InitReport, AuthError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| AuthError::io("creating the auth directory", dir, e))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| AuthError::io("restricting the auth directory", dir, e))?;
    }
    let mut keys = Vec::with_capacity(Role::ALL.len());
    for role in Role::ALL {
        let (key, outcome) = keys::ensure_key(dir, role, rotate)?;
        keys.push((role, key.public_key(), outcome));
    }
    let users: Vec<(Role, String)> = keys.iter().map(|(r, k, _)| (*r, k.clone())).collect();
    keys::write_private(&dir.join(AUTH_CONF), conf::render(&users).as_bytes())?;
    Ok(InitReport {
        dir: dir.to_owned(),
        keys,
    })
}

/// Whether `dir` already holds an authorization block and every role's seed.
pub fn is_initialised(dir: &Path) -> bool {
    dir.join(AUTH_CONF).is_file() && Role::ALL.iter().all(|r| seed_path(dir, *r).is_file())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn init_writes_private_seeds_and_keeps_them_unless_rotated() -> Result<(), AuthError> {
        let dir = tempfile::tempdir().map_err(|e| AuthError::io("tempdir", Path::new("."), e))?;
        let auth = dir.path().join("auth");
        let first = init(&auth, false)?;
        assert!(is_initialised(&auth));
        for (role, public, outcome) in &first.keys {
            assert_eq!(*outcome, KeyOutcome::Created);
            assert!(public.starts_with('U'));
            let path = seed_path(&auth, *role);
            let mode = std::fs::metadata(&path)
                .map_err(|e| AuthError::io("stat", &path, e))?
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{role}");
            assert_eq!(keys::read_key(&path)?.public_key(), *public);
        }
        let conf = std::fs::read_to_string(first.auth_conf())
            .map_err(|e| AuthError::io("read", &auth, e))?;
        for (_, public, _) in &first.keys {
            assert!(conf.contains(public.as_str()));
        }

        let again = init(&auth, false)?;
        for (a, b) in first.keys.iter().zip(&again.keys) {
            assert_eq!((a.0, &a.1, b.2), (b.0, &b.1, KeyOutcome::Kept));
        }
        let rotated = init(&auth, true)?;
        for (a, b) in first.keys.iter().zip(&rotated.keys) {
            assert_eq!(b.2, KeyOutcome::Rotated);
            assert_ne!(a.1, b.1, "{} kept its key through --rotate", a.0);
        }
        Ok(())
    }

    #[test]
    fn a_corrupt_seed_is_refused_rather_than_replaced() -> Result<(), AuthError> {
        let dir = tempfile::tempdir().map_err(|e| AuthError::io("tempdir", Path::new("."), e))?;
        let path = seed_path(dir.path(), Role::Payment);
        std::fs::write(&path, "not a seed").map_err(|e| AuthError::io("write", &path, e))?;
        let error = init(dir.path(), false).err();
        assert!(
            matches!(error, Some(AuthError::BadSeed { .. })),
            "{error:?}"
        );
        assert!(!error.is_some_and(|e| e.is_transient()));
        Ok(())
    }
}
