//! The auth crate's one error type.

use std::path::PathBuf;

/// What can go wrong while writing or reading the shop's NATS identities.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading or writing a key file or the authorization block failed.
    #[error("{context} ({path}): {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A key file exists but holds no usable user seed; `--rotate` replaces it.
    #[error(
        "{path} holds no valid nkey user seed ({reason}); fix or delete it, or run with --rotate"
    )]
    BadSeed { path: PathBuf, reason: String },
    /// Generating a key pair failed (the system's random source).
    #[error("generating an nkey failed: {0}")]
    KeyGeneration(String),
}

impl AuthError {
    /// Whether running the same command again can help: a file-system hiccup can (a full
    /// disk freed, a busy file); a corrupt seed or a broken random source cannot.
    pub fn is_transient(&self) -> bool {
        match self {
            AuthError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
            ),
            AuthError::BadSeed { .. } | AuthError::KeyGeneration(_) => false,
        }
    }

    pub(crate) fn io(
        context: &'static str,
        path: &std::path::Path,
        source: std::io::Error,
    ) -> Self {
        AuthError::Io {
            context,
            path: path.to_owned(),
            source,
        }
    }
}
