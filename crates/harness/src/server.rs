//! A real `nats-server` child process per test: free port, temporary JetStream store, killed on drop.
//!
//! Modelled on the nats.rs test helper: tests talk to the same server binary
//! production uses, so JetStream semantics (dedup window, PubAcks, limits) are
//! the real ones, and restarts exercise real recovery from the file store.
//!
//! Each server runs with the shop's generated authorization (`shop auth init` into its
//! temp dir, included from its config) unless [`ServerOptions::without_auth`]: the
//! services then run as their own least-privilege roles, which proves the rights suffice.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use shop_auth::Role;
use shop_runtime::connect::NatsConfig;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::wait::Backoff;
use crate::HarnessError;

/// Environment variable naming the binary; `make test` exports it.
pub const NATS_SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

/// How long a fresh or restarted server may take to report healthy.
/// Generous because the build machine is small and shared.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a graceful stop may take before the process is killed outright.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// A free port is found by binding and releasing it, so another process may take
/// it in between; a few fresh picks make that race practically harmless.
const LAUNCH_ATTEMPTS: usize = 3;

/// How many log lines an error carries; enough for the reason, short enough to read.
const LOG_TAIL_LINES: usize = 25;

/// How a harness server is set up; the defaults suit a single-node test.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    port: Option<u16>,
    extra_config: String,
    ready_timeout: Duration,
    auth: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            port: None,
            extra_config: String::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            auth: true,
        }
    }
}

impl ServerOptions {
    /// Listens on this client port instead of a free one (for example to mimic `nats.conf`).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Config text appended after the generated defaults, for example a `cluster { … }`
    /// block or different limits; a key set here overrides the default above it.
    pub fn extra_config(mut self, text: impl Into<String>) -> Self {
        self.extra_config = text.into();
        self
    }

    /// How long to wait for `/healthz` after each (re)start.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Accepts any client without credentials, for a test about something else on
    /// purpose (the shop's own deployment never runs like this).
    pub fn without_auth(mut self) -> Self {
        self.auth = false;
        self
    }
}

/// Writes the roles' keys and the authorization block into `dir` (kept if present, so a
/// restarted server knows the same keys).
pub(crate) fn init_auth(dir: &Path) -> Result<(), HarnessError> {
    shop_auth::init(dir, false)?;
    Ok(())
}

/// The config line that includes the block `init_auth` wrote, `relative` to the config
/// file's directory (nats-server resolves includes from there).
pub(crate) fn auth_include(relative: &str) -> String {
    format!(
        "# Each role's nkey and rights (shop auth init).\ninclude \"{relative}/{}\"\n",
        shop_auth::AUTH_CONF
    )
}

/// Guard around a running `nats-server`; dropping it kills the server and deletes its store.
pub struct NatsServer {
    // Declared before `dir` so the process is signalled before its files are removed.
    child: Option<Child>,
    bin: PathBuf,
    port: u16,
    http_port: u16,
    options: ServerOptions,
    dir: TempDir,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("url", &self.url())
            .field("http_port", &self.http_port)
            .field("running", &self.child.is_some())
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// The auth directory's name inside a server's temp dir.
const AUTH_DIR: &str = "auth";

impl NatsServer {
    /// Starts a server on a free port with a fresh JetStream store.
    pub async fn start() -> Result<NatsServer, HarnessError> {
        NatsServer::start_with(ServerOptions::default()).await
    }

    /// Starts a server with the given options.
    pub async fn start_with(options: ServerOptions) -> Result<NatsServer, HarnessError> {
        let bin = find_server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("shop-nats-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the server's temp dir", e))?;
        let (port, http_port) = pick_ports(options.port)?;
        let mut server = NatsServer {
            child: None,
            bin,
            port,
            http_port,
            options,
            dir,
        };
        if server.options.auth {
            init_auth(&server.dir.path().join(AUTH_DIR))?;
        }
        let attempts = if server.options.port.is_some() {
            1
        } else {
            LAUNCH_ATTEMPTS
        };
        let mut attempt = 1;
        loop {
            match server.launch().await {
                Ok(()) => {
                    if let Some(dir) = server.auth_dir() {
                        crate::client::register_credentials(&server.url(), &dir);
                    }
                    return Ok(server);
                }
                // Most likely a port was taken between picking and binding: pick again.
                Err(HarnessError::ServerExited { .. }) if attempt < attempts => {
                    attempt += 1;
                    let (port, http_port) = pick_ports(server.options.port)?;
                    server.port = port;
                    server.http_port = http_port;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The directory holding each role's key (`<role>.nk`) and `auth.conf`; `None`
    /// without auth.
    pub fn auth_dir(&self) -> Option<PathBuf> {
        self.options.auth.then(|| self.dir.path().join(AUTH_DIR))
    }

    /// How `role` connects to this server: its key when the server runs with auth.
    pub fn nats_config(&self, role: Role) -> NatsConfig {
        let config = NatsConfig::new(self.url());
        match self.auth_dir() {
            Some(dir) => config.with_nkey(shop_auth::seed_path(&dir, role)),
            None => config,
        }
    }

    /// A connection as `role` (see [`crate::connect`], which connects as admin).
    pub async fn connect_as(&self, role: Role) -> Result<async_nats::Client, HarnessError> {
        crate::client::connect_with(&self.nats_config(role)).await
    }

    /// The client port; it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<monitoring port>`, for `/healthz`, `/jsz`, `/varz`.
    pub fn monitoring_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The JetStream `store_dir`; it outlives restarts and is deleted on drop.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The server's combined stdout and stderr, appended to across restarts.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// The last lines of the server log, for assertion messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path())
    }

    /// Whether the guard currently has a server process (it may still have crashed on its own).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server and starts it again on the same port with the same store,
    /// so streams and their messages survive, as after a rolling restart.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.stop().await?;
        self.start_again().await
    }

    /// Stops the server gracefully (SIGTERM, so JetStream flushes its store), killing it
    /// if it does not exit in time. Does nothing if it is already stopped.
    pub async fn stop(&mut self) -> Result<(), HarnessError> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if !send_sigterm(&child).await {
            return hard_kill(&mut child).await;
        }
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(HarnessError::io("waiting for nats-server to exit", e)),
            Err(_) => hard_kill(&mut child).await,
        }
    }

    /// Kills the server abruptly (SIGKILL), as a crash or power cut of the process would.
    pub async fn kill(&mut self) -> Result<(), HarnessError> {
        match self.child.take() {
            Some(mut child) => hard_kill(&mut child).await,
            None => Ok(()),
        }
    }

    /// Starts a stopped server again on the same port with the same store.
    /// Does nothing if it is running.
    pub async fn start_again(&mut self) -> Result<(), HarnessError> {
        if self.child.is_some() {
            return Ok(());
        }
        self.launch().await
    }

    /// Writes the config, spawns the process and waits until it reports healthy.
    async fn launch(&mut self) -> Result<(), HarnessError> {
        let conf_path = self.dir.path().join("nats.conf");
        let child =
            spawn_with_config(&self.bin, &conf_path, &self.config_text(), &self.log_path())?;
        self.child = Some(child);
        let ready = self.wait_until_ready().await;
        if ready.is_err() {
            // Leave nothing half-started behind; the error already carries the log.
            let _ = self.kill().await;
        }
        ready
    }

    fn config_text(&self) -> String {
        let base = base_config(
            self.port,
            self.http_port,
            &format!("harness-{}", self.port),
            &self.store_dir(),
            TEST_MAX_FILE_STORE,
        );
        let auth = if self.options.auth {
            auth_include(AUTH_DIR)
        } else {
            String::new()
        };
        format!("{base}{auth}{extra}\n", extra = self.options.extra_config)
    }

    /// Polls `/healthz` (which only answers 200 once JetStream is up) until the deadline,
    /// failing early if the process exits.
    async fn wait_until_ready(&mut self) -> Result<(), HarnessError> {
        let started = Instant::now();
        let timeout = self.options.ready_timeout;
        let mut backoff = Backoff::new();
        loop {
            let child = self.child.as_mut().ok_or(HarnessError::ServerStopped)?;
            let exited = child
                .try_wait()
                .map_err(|e| HarnessError::io("checking on nats-server", e))?;
            if let Some(status) = exited {
                self.child = None;
                return Err(HarnessError::ServerExited {
                    status: status.to_string(),
                    log_tail: self.log_tail(),
                });
            }
            if healthz_ok(self.http_port).await {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(HarnessError::ServerNotReady {
                    url: self.url(),
                    after: timeout,
                    log_tail: self.log_tail(),
                });
            }
            backoff.sleep().await;
        }
    }
}

/// Set (to anything) to keep every server's store and config after the test, for a
/// post-mortem of a failed run: start a server on it and read the streams.
pub const KEEP_STORE_ENV: &str = "SHOP_KEEP_NATS_STORE";

impl Drop for NatsServer {
    fn drop(&mut self) {
        crate::client::forget_credentials(&self.url());
        if std::env::var_os(KEEP_STORE_ENV).is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "{KEEP_STORE_ENV}: the server's store is kept in {}",
                self.dir.path().display()
            );
        }
        let Some(child) = self.child.as_mut() else {
            return;
        };
        let _ = child.start_kill();
        // Give the process a moment to die so the TempDir removal that follows does not
        // race with a server still writing into the store.
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            match child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                _ => break,
            }
        }
    }
}

/// `$NATS_SERVER_BIN`, else the workspace's `.tools/bin/nats-server`, else `nats-server` on PATH.
pub fn find_server_binary() -> Result<PathBuf, HarnessError> {
    let mut searched = Vec::new();
    if let Some(bin) = std::env::var_os(NATS_SERVER_BIN_ENV) {
        let bin = PathBuf::from(bin);
        if bin.is_file() {
            return Ok(bin);
        }
        searched.push(bin);
    }
    let workspace_tool = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../.tools/bin/nats-server")
        .components()
        .collect::<PathBuf>();
    if workspace_tool.is_file() {
        return Ok(workspace_tool);
    }
    searched.push(workspace_tool);
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    searched.push(PathBuf::from("$PATH/nats-server"));
    Err(HarnessError::ServerBinaryNotFound { searched })
}

/// How much file storage a harness server may use: small, because many test servers
/// share one machine. A bench's cluster asks for more ([`crate::NatsCluster::start_with_max_file_store`]).
pub(crate) const TEST_MAX_FILE_STORE: &str = "1GB";

/// The config every harness server starts from: client and monitoring ports on
/// 127.0.0.1, a name, production's payload limit and a JetStream store in `store_dir`
/// of at most `max_file_store`. A cluster node appends its `cluster { … }` block.
pub(crate) fn base_config(
    port: u16,
    http_port: u16,
    server_name: &str,
    store_dir: &Path,
    max_file_store: &str,
) -> String {
    // Quoted with escapes so temp paths with spaces or backslashes stay one string.
    let store = format!("{:?}", store_dir.display().to_string());
    format!(
        "# Written by shop-harness for one test; deleted with the test's temp dir.\n\
         listen: 127.0.0.1:{port}\n\
         http: 127.0.0.1:{http_port}\n\
         server_name: {server_name}\n\
         # Same as nats.conf, so oversized events are refused here as in production.\n\
         max_payload: 1MB\n\
         jetstream {{\n\
         \x20 store_dir: {store}\n\
         \x20 # Small limits: many test servers share one machine.\n\
         \x20 max_memory_store: 64MB\n\
         \x20 max_file_store: {max_file_store}\n\
         }}\n",
    )
}

/// Writes `config` to `conf_path` and starts `bin` on it, its output appended to `log`.
pub(crate) fn spawn_with_config(
    bin: &Path,
    conf_path: &Path,
    config: &str,
    log: &Path,
) -> Result<Child, HarnessError> {
    std::fs::write(conf_path, config)
        .map_err(|e| HarnessError::io("writing the server config", e))?;
    let (stdout, stderr) = open_log(log)?;
    Command::new(bin)
        .arg("--config")
        .arg(conf_path)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HarnessError::io(format!("spawning {}", bin.display()), e))
}

/// Picks the client port (fixed or free) and a free monitoring port.
fn pick_ports(fixed: Option<u16>) -> Result<(u16, u16), HarnessError> {
    match fixed {
        Some(port) => Ok((port, free_ports(1)?[0])),
        None => {
            let ports = free_ports(2)?;
            Ok((ports[0], ports[1]))
        }
    }
}

/// `count` distinct free ports on 127.0.0.1.
pub(crate) fn free_ports(count: usize) -> Result<Vec<u16>, HarnessError> {
    // Every listener is held until all are bound, so no port is handed out twice.
    let listeners = (0..count)
        .map(|_| {
            TcpListener::bind("127.0.0.1:0")
                .map_err(|e| HarnessError::io("binding 127.0.0.1:0 to find a free port", e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| HarnessError::io("reading a bound port", e))
        })
        .collect()
}

fn open_log(path: &Path) -> Result<(File, File), HarnessError> {
    // Append, so the log of a restarted server still shows why it went down.
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| HarnessError::io("opening the server log", e))?;
    let err = out
        .try_clone()
        .map_err(|e| HarnessError::io("sharing the server log with stderr", e))?;
    Ok((out, err))
}

pub(crate) fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines[from..].join("\n")
        }
        Err(e) => format!("(no server log at {}: {e})", path.display()),
    }
}

async fn healthz_ok(http_port: u16) -> bool {
    monitoring_get(http_port, "/healthz").await.is_some()
}

/// One `GET` of a monitoring endpoint (`/healthz`, `/jsz`) over a raw socket, the body
/// if it answered 200 within a second: the harness has no HTTP client and needs none.
pub(crate) async fn monitoring_get(http_port: u16, path: &str) -> Option<String> {
    let probe = async {
        let mut stream = TcpStream::connect(("127.0.0.1", http_port)).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status_line = head.lines().next()?;
        status_line.contains(" 200 ").then(|| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(1), probe)
        .await
        .ok()
        .flatten()
}

/// Asks the server to shut down cleanly; `false` if it could not be sent.
async fn send_sigterm(child: &Child) -> bool {
    send_signal(child, "TERM").await
}

/// Sends `signal` (`TERM`, `STOP`, `CONT`) to the process. Uses the `kill` command because
/// the workspace has no libc binding and `unsafe` is forbidden; `false` if it could not be sent.
pub(crate) async fn send_signal(child: &Child, signal: &str) -> bool {
    let Some(pid) = child.id() else {
        return false;
    };
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

pub(crate) async fn hard_kill(child: &mut Child) -> Result<(), HarnessError> {
    child
        .kill()
        .await
        .map_err(|e| HarnessError::io("killing nats-server", e))
}
