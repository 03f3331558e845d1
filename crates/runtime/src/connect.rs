//! Connecting to NATS: credentials (an nkey seed file, TLS), a private inbox prefix, a
//! first connection retried with a readable message while NATS is away, and the server's
//! permission refusals turned into typed, logged, counted events.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event, ServerError};

use crate::shutdown::Shutdown;
use crate::RuntimeError;

/// How a process reaches NATS: the server list and, as the deployment requires, its
/// credentials. Built from [`crate::cli::CommonArgs::nats`] in binaries; tests build it
/// from a harness server's URL and credentials.
///
/// It holds file *paths* only: the seed is read when connecting and handed to the client,
/// so no copy of a secret lives here, and `Debug` (written by hand) shows the paths only.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// One URL, or a comma-separated list naming the servers of a cluster.
    pub url: String,
    /// A file holding the identity's nkey user seed (`SU…`, as `shop auth init` writes it).
    pub nkey: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for the server's certificate; setting it
    /// (or a client certificate) requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// The client certificate (PEM) for mutual TLS; needs [`NatsConfig::tls_key`].
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Where replies to this client's requests arrive (`_INBOX_<role>`): with per-role
    /// permissions only that prefix is readable. `None`: derived from the seed file's name
    /// (`checkout.nk` gives `_INBOX_checkout`, the layout `shop auth init` writes), or the
    /// client's default `_INBOX` without a seed.
    pub inbox_prefix: Option<String>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.url)
            .field("nkey_file", &self.nkey)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key_file", &self.tls_key)
            .field("inbox_prefix", &self.inbox_prefix())
            .finish()
    }
}

impl NatsConfig {
    /// Plain connection settings for `url`: no credentials, no TLS.
    pub fn new(url: impl Into<String>) -> NatsConfig {
        NatsConfig {
            url: url.into(),
            nkey: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            inbox_prefix: None,
        }
    }

    /// Authenticates with the nkey seed in `file`.
    pub fn with_nkey(mut self, file: impl Into<PathBuf>) -> NatsConfig {
        self.nkey = Some(file.into());
        self
    }

    /// Trusts the CA certificates in `file` for the server's certificate, and requires TLS.
    pub fn with_tls_ca(mut self, file: impl Into<PathBuf>) -> NatsConfig {
        self.tls_ca = Some(file.into());
        self
    }

    /// Presents the client certificate `cert` with its key `key` (mutual TLS).
    pub fn with_client_certificate(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> NatsConfig {
        self.tls_cert = Some(cert.into());
        self.tls_key = Some(key.into());
        self
    }

    /// Receives replies under `prefix` instead of the derived one.
    pub fn with_inbox_prefix(mut self, prefix: impl Into<String>) -> NatsConfig {
        self.inbox_prefix = Some(prefix.into());
        self
    }

    /// The inbox prefix this client uses: the configured one, else `_INBOX_<seed file
    /// stem>` with a seed, else `None` (the client's default).
    pub fn inbox_prefix(&self) -> Option<String> {
        self.inbox_prefix.clone().or_else(|| {
            let stem = self.nkey.as_deref()?.file_stem()?.to_str()?;
            Some(format!("_INBOX_{stem}"))
        })
    }

    /// Whether the connection must be TLS.
    pub fn tls_required(&self) -> bool {
        self.tls_ca.is_some() || self.tls_cert.is_some()
    }

    /// The servers of [`NatsConfig::url`], one per entry.
    fn servers(&self) -> Vec<&str> {
        self.url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// Client options with the credentials applied; reads the seed now, so a missing or
    /// unreadable key is reported before any connection attempt.
    pub fn options(&self) -> Result<ConnectOptions, async_nats::ConnectError> {
        // A frozen server (a hung VM, a long pause) keeps its TCP connection open and
        // answers nothing; the client notices only from unanswered pings, and reconnects
        // to another node after more than two are outstanding. async-nats pings once a
        // minute by default, so a service on a frozen cluster node would stall for two to
        // three minutes; every two seconds it moves within about six.
        let mut options = ConnectOptions::new().ping_interval(PING_INTERVAL);
        if let Some(file) = &self.nkey {
            options = options.nkey(read_seed(file)?);
        }
        if let Some(prefix) = self.inbox_prefix() {
            options = options.custom_inbox_prefix(prefix);
        }
        for file in [&self.tls_ca, &self.tls_cert, &self.tls_key]
            .into_iter()
            .flatten()
        {
            // async-nats reads these only while connecting; a typo would otherwise look
            // like an unreachable server and be retried for ever.
            std::fs::metadata(file).map_err(|e| described(e, "reading TLS file", file))?;
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => {
                return Err(async_nats::ConnectError::from(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "--tls-cert and --tls-key go together: give both or neither",
                )))
            }
        }
        Ok(options.require_tls(self.tls_required()))
    }
}

/// How often a client pings its server to find out that it stopped answering.
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The seed in `file`, trimmed; the error names the file, never its content.
fn read_seed(file: &Path) -> Result<String, async_nats::ConnectError> {
    let text =
        std::fs::read_to_string(file).map_err(|e| described(e, "reading nkey seed", file))?;
    Ok(text.trim().to_owned())
}

fn described(error: std::io::Error, what: &str, file: &Path) -> async_nats::ConnectError {
    async_nats::ConnectError::from(std::io::Error::new(
        error.kind(),
        format!("{what} {}: {error}", file.display()),
    ))
}

/// What the server refused: the operation and the subject, from its permissions
/// violation (`-ERR 'Permissions Violation for Publish to "…"'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermissionDenial {
    pub operation: DeniedOperation,
    pub subject: String,
}

/// The kind of operation a [`PermissionDenial`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeniedOperation {
    Publish,
    Subscribe,
}

impl PermissionDenial {
    /// Reads a server error; `None` when it is not a permissions violation.
    pub fn from_server_error(error: &ServerError) -> Option<PermissionDenial> {
        let ServerError::Other(text) = error else {
            return None;
        };
        // The server's wording is its protocol: `Permissions Violation for <Publish|
        // Subscription> to "<subject>"`, optionally followed by a queue group.
        let text = text.trim().trim_matches('\'');
        let lower = text.to_ascii_lowercase();
        let rest_at = |prefix: &str| lower.starts_with(prefix).then(|| &text[prefix.len()..]);
        let (operation, rest) = if let Some(rest) = rest_at("permissions violation for publish to ")
        {
            (DeniedOperation::Publish, rest)
        } else if let Some(rest) = rest_at("permissions violation for subscription to ") {
            (DeniedOperation::Subscribe, rest)
        } else {
            return None;
        };
        let subject = rest
            .trim()
            .strip_prefix('"')
            .and_then(|r| r.split_once('"'))
            .map(|(subject, _)| subject)
            .unwrap_or_else(|| rest.split_whitespace().next().unwrap_or_default());
        Some(PermissionDenial {
            operation,
            subject: subject.to_owned(),
        })
    }
}

impl std::fmt::Display for PermissionDenial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let operation = match self.operation {
            DeniedOperation::Publish => "publish to",
            DeniedOperation::Subscribe => "subscribe to",
        };
        write!(
            f,
            "NATS refused to let this identity {operation} {}",
            self.subject
        )
    }
}

/// Told of every permissions violation the server reports on a connection (the service's
/// STATS count them).
pub trait DenialSink: Send + Sync {
    fn denied(&self, denial: &PermissionDenial);
}

/// Connects to `url`, retrying with backoff until it answers or shutdown is requested.
///
/// After the first connection async-nats reconnects on its own; what it
/// cannot do is wait for a server that was never up, which is what a
/// service started before its broker needs.
pub async fn connect(
    config: &NatsConfig,
    name: &str,
    shutdown: &Shutdown,
) -> Result<Client, RuntimeError> {
    connect_reporting(config, name, shutdown, None).await
}

/// [`connect`], telling `denials` of each permissions violation as well as logging it.
///
/// Refused credentials (an authorization violation, a TLS failure, an unreadable key)
/// end the retries at once: no amount of waiting fixes them.
pub async fn connect_reporting(
    config: &NatsConfig,
    name: &str,
    shutdown: &Shutdown,
    denials: Option<Arc<dyn DenialSink>>,
) -> Result<Client, RuntimeError> {
    let url = config.url.as_str();
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let failed = |source| RuntimeError::Connect {
            url: url.to_owned(),
            source,
        };
        let sink = denials.clone();
        let connection = name.to_owned();
        let options = config
            .options()
            .map_err(failed)?
            .name(name)
            .connection_timeout(Duration::from_secs(2))
            .event_callback(move |event| {
                let (sink, connection) = (sink.clone(), connection.clone());
                async move { on_event(event, &connection, sink.as_deref()) }
            });
        let error = match options.connect(config.servers()).await {
            Ok(client) => {
                if attempt > 1 {
                    tracing::info!(url, attempt, "connected to NATS");
                }
                return Ok(client);
            }
            Err(error) => error,
        };
        if matches!(
            error.kind(),
            ConnectErrorKind::AuthorizationViolation
                | ConnectErrorKind::Authentication
                | ConnectErrorKind::Tls
        ) {
            tracing::error!(
                url,
                error = %error,
                "NATS refused this client's credentials (check --nkey and the TLS files, \
                 and that the server includes the current auth.conf)"
            );
            return Err(failed(error));
        }
        tracing::warn!(
            url,
            attempt,
            error = %error,
            "NATS is unreachable; retrying in {delay:?} (is nats-server running? try `make run`)"
        );
        let mut stop = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.requested() => {
                // Shutdown ends the waiting; the last attempt's error says why there was no connection.
                return Err(failed(error));
            }
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Logs a connection event; a permissions violation is an error naming the refused
/// subject, and goes to the sink. Nothing here retries: the operation that was refused
/// fails on its own (a timeout, no PubAck) and its caller decides, so nothing spins.
fn on_event(event: Event, connection: &str, sink: Option<&dyn DenialSink>) {
    if let Event::ServerError(error) = &event {
        if let Some(denial) = PermissionDenial::from_server_error(error) {
            tracing::error!(
                connection,
                subject = %denial.subject,
                operation = ?denial.operation,
                "{denial} (permissions violation; see docs/SECURITY.md for each role's rights)"
            );
            if let Some(sink) = sink {
                sink.denied(&denial);
            }
            return;
        }
    }
    tracing::info!(connection, %event, "NATS connection event");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_violations_are_read_into_operation_and_subject() {
        let publish = ServerError::Other(
            "Permissions Violation for Publish to \"events.payments.captured.o-1\"".to_owned(),
        );
        assert_eq!(
            PermissionDenial::from_server_error(&publish),
            Some(PermissionDenial {
                operation: DeniedOperation::Publish,
                subject: "events.payments.captured.o-1".to_owned(),
            })
        );
        let subscribe = ServerError::Other(
            "'Permissions Violation for Subscription to \"_INBOX_admin.x\" using queue \"q\"'"
                .to_owned(),
        );
        assert_eq!(
            PermissionDenial::from_server_error(&subscribe).map(|d| (d.operation, d.subject)),
            Some((DeniedOperation::Subscribe, "_INBOX_admin.x".to_owned()))
        );
        assert_eq!(
            PermissionDenial::from_server_error(&ServerError::Other("maximum payload".into())),
            None
        );
        assert_eq!(
            PermissionDenial::from_server_error(&ServerError::AuthorizationViolation),
            None
        );
    }

    #[test]
    fn the_inbox_follows_the_key_file_unless_given() {
        let plain = NatsConfig::new("nats://x:4222");
        assert_eq!(plain.inbox_prefix(), None);
        let keyed = plain.clone().with_nkey("/etc/shop/auth/payment.nk");
        assert_eq!(keyed.inbox_prefix().as_deref(), Some("_INBOX_payment"));
        let given = keyed.with_inbox_prefix("_INBOX_other");
        assert_eq!(given.inbox_prefix().as_deref(), Some("_INBOX_other"));
    }

    #[test]
    fn debug_shows_paths_and_never_reads_a_seed() {
        let dir = std::env::temp_dir().join(format!("shop-connect-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join("checkout.nk");
        let seed = "SUA-not-a-real-seed-but-secret-all-the-same";
        let _ = std::fs::write(&file, seed);
        let config = NatsConfig::new("nats://x:4222").with_nkey(&file);
        let shown = format!("{config:?}");
        assert!(shown.contains("checkout.nk"), "{shown}");
        assert!(!shown.contains(seed), "{shown}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_key_file_is_an_io_error_before_any_connection() {
        let config = NatsConfig::new("nats://x:4222").with_nkey("/nonexistent/payment.nk");
        let kind = config.options().err().map(|e| e.kind());
        assert_eq!(kind, Some(ConnectErrorKind::Io));
    }

    #[test]
    fn half_a_client_certificate_is_refused() {
        let mut config = NatsConfig::new("nats://x:4222");
        config.tls_cert = Some(PathBuf::from("/"));
        assert!(config.options().is_err());
    }
}
