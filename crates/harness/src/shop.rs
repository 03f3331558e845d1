//! Starts the shop's three services against a [`crate::NatsServer`], in-process or as
//! real OS processes, and injects faults: kill -9, graceful stop, restart.
//!
//! In-process services are quick to start and easy to debug, but a "kill" can
//! only stop them gracefully. Process mode runs the deployable `checkout`,
//! `inventory` and `payment` binaries, each with its own data directory, so
//! `kill` is a real SIGKILL and crash points (`SHOP_CRASHPOINT`) can abort them.
//!
//! Payment calls a payment gateway simulator that the shop starts before payment:
//! in-process mode serves it from a task on a free port, process mode runs the
//! `gateway-sim` binary next to the others (or, when that binary was not built,
//! the task). It keeps its address across restarts, so payment's URL stays valid.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

/// The clock a test hands to [`ShopConfig::manual_clock`] and advances.
pub use shop_checkout::clock::ManualClock;
use shop_checkout::clock::{self, Clock};
use shop_events::api::deadletters::DISCARD_ENDPOINT;
use shop_gateway_sim::Simulator;
/// How the payment gateway simulator behaves, for [`ShopConfig::gateway`].
pub use shop_gateway_sim::SimulatorConfig;
use shop_payment::gateway::HttpGatewayConfig;
use shop_runtime::shutdown::{Shutdown, ShutdownTrigger};
use tokio::task::JoinHandle;

use crate::HarnessError;

mod instances;
pub use instances::InstanceInfo;

/// One of the three services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    Checkout,
    Inventory,
    Payment,
}

impl Service {
    pub const ALL: [Service; 3] = [Service::Checkout, Service::Inventory, Service::Payment];

    pub fn name(self) -> &'static str {
        match self {
            Service::Checkout => "checkout",
            Service::Inventory => "inventory",
            Service::Payment => "payment",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How services are run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    InProcess,
    /// The service binaries in this directory (normally `target/<profile>`).
    Processes {
        bin_dir: PathBuf,
    },
}

/// Settings for a shop under test.
#[derive(Debug, Clone)]
pub struct ShopConfig {
    pub mode: Mode,
    pub order_deadline: Duration,
    pub gateway: SimulatorConfig,
    /// `SHOP_CRASHPOINT` for process mode, e.g. `after_commit_before_ack:0.01`.
    pub crashpoints: Option<String>,
    /// Extra environment for process mode (RUST_LOG, …).
    pub env: Vec<(String, String)>,
    /// Where the services keep their data; a temporary directory when `None`.
    pub data_dir: Option<PathBuf>,
    /// The clock in-process checkout places orders and passes deadlines by; the
    /// system clock when `None`. Process-mode services always use the system clock.
    pub clock: Option<ManualClock>,
    /// How many servers keep each stream the services declare (`SHOP_STREAM_REPLICAS`);
    /// 3 against a [`crate::NatsCluster`].
    pub stream_replicas: usize,
    /// How long a dead instance's partitions stay locked (`SHOP_LEASE_TTL`): shorter
    /// than production's 10 s, so a test that kills a service does not wait for long.
    pub lease_ttl: Duration,
    /// How long a start waits for the service to answer INFO. On a cluster a service
    /// that starts while a node is frozen waits out the election before it can join its
    /// group (up to a minute, `STARTUP_PATIENCE`): a chaos run on a cluster once gave up on
    /// a restarted checkout after 30 s that way.
    pub ready_within: Duration,
}

impl Default for ShopConfig {
    fn default() -> Self {
        ShopConfig {
            mode: Mode::InProcess,
            order_deadline: Duration::from_secs(30),
            gateway: SimulatorConfig::default(),
            crashpoints: None,
            env: Vec::new(),
            data_dir: None,
            clock: None,
            stream_replicas: 1,
            lease_ttl: Duration::from_secs(3),
            ready_within: Duration::from_secs(30),
        }
    }
}

impl ShopConfig {
    pub fn in_process() -> ShopConfig {
        ShopConfig::default()
    }

    /// Process mode using the binaries next to `any_bin` (for example `env!("CARGO_BIN_EXE_shop")`).
    pub fn processes_next_to(any_bin: &Path) -> ShopConfig {
        let bin_dir = any_bin.parent().map(Path::to_path_buf).unwrap_or_default();
        ShopConfig {
            mode: Mode::Processes { bin_dir },
            ..ShopConfig::default()
        }
    }

    pub fn order_deadline(mut self, deadline: Duration) -> Self {
        self.order_deadline = deadline;
        self
    }

    pub fn gateway(mut self, gateway: SimulatorConfig) -> Self {
        self.gateway = gateway;
        self
    }

    pub fn crashpoints(mut self, spec: impl Into<String>) -> Self {
        self.crashpoints = Some(spec.into());
        self
    }

    /// Declares every stream on `replicas` servers, as `--replicas` does.
    pub fn stream_replicas(mut self, replicas: usize) -> Self {
        self.stream_replicas = replicas;
        self
    }

    /// Runs checkout on `clock` (clones share its time), so a test moves past a
    /// deadline with [`ManualClock::advance`] instead of waiting for it. In-process only.
    pub fn manual_clock(mut self, clock: &ManualClock) -> Self {
        self.clock = Some(clock.clone());
        self
    }
}

enum Running {
    Task {
        trigger: ShutdownTrigger,
        handle: JoinHandle<Result<(), String>>,
    },
    Process {
        child: tokio::process::Child,
        log: PathBuf,
    },
}

/// The payment gateway simulator, when it runs.
enum Gateway {
    Task(Simulator),
    Process {
        child: tokio::process::Child,
        log: PathBuf,
    },
}

/// A running shop; dropping it stops every service (processes are killed).
pub struct Shop {
    nats_url: String,
    config: ShopConfig,
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    running: BTreeMap<Service, Running>,
    starts: BTreeMap<Service, u32>,
    /// Named instances of scaled-out services, beside the one in `running`.
    instances: BTreeMap<(Service, String), Running>,
    gateway: Option<Gateway>,
    /// Where the gateway listens; fixed at its first start, so restarts keep payment's URL.
    gateway_addr: Option<SocketAddr>,
}

impl fmt::Debug for Shop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shop")
            .field("nats_url", &self.nats_url)
            .field("data_dir", &self.data_dir)
            .field("running", &self.running.keys().collect::<Vec<_>>())
            .field("gateway", &self.gateway_url())
            .finish()
    }
}

impl Shop {
    /// Starts all three services and waits until each answers its micro PING.
    pub async fn start(nats_url: &str, config: ShopConfig) -> Result<Shop, HarnessError> {
        let mut shop = Shop::new(nats_url, config)?;
        for service in Service::ALL {
            shop.start_service(service).await?;
        }
        Ok(shop)
    }

    /// A shop with no service started yet.
    pub fn new(nats_url: &str, config: ShopConfig) -> Result<Shop, HarnessError> {
        if config.clock.is_some() && config.mode != Mode::InProcess {
            // A spawned binary cannot share the test's clock; failing beats a test
            // that advances a clock nobody reads and then waits in vain.
            return Err(HarnessError::ServiceFailed {
                service: Service::Checkout.name().into(),
                reason: "a manual clock reaches in-process services only".into(),
            });
        }
        let (data_dir, temp) = match &config.data_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("shop-data-")
                    .tempdir()
                    .map_err(|e| HarnessError::io("creating the shop's data directory", e))?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        Ok(Shop {
            nats_url: nats_url.to_owned(),
            config,
            data_dir,
            _temp: temp,
            running: BTreeMap::new(),
            starts: BTreeMap::new(),
            instances: BTreeMap::new(),
            gateway: None,
            gateway_addr: None,
        })
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn is_running(&self, service: Service) -> bool {
        self.running.contains_key(&service)
    }

    /// How many times each service was started.
    pub fn starts(&self) -> &BTreeMap<Service, u32> {
        &self.starts
    }

    /// Starts one service and waits until it answers PING.
    pub async fn start_service(&mut self, service: Service) -> Result<(), HarnessError> {
        if self.running.contains_key(&service) {
            return Ok(());
        }
        if service == Service::Payment {
            self.start_gateway().await?;
        }
        // With crash points on, a process may abort while it starts (draining its
        // outbox, say); that is the point of them, so start it again.
        let attempts = if self.config.crashpoints.is_some() {
            20
        } else {
            1
        };
        let mut last = None;
        for _ in 0..attempts {
            let running = match &self.config.mode {
                Mode::InProcess => self.spawn_task(service),
                Mode::Processes { bin_dir } => self.spawn_process(service, &bin_dir.clone())?,
            };
            self.running.insert(service, running);
            *self.starts.entry(service).or_default() += 1;
            match self.wait_ready(service).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if self.has_exited(service) {
                        self.running.remove(&service);
                    }
                    last = Some(e);
                    if self.running.contains_key(&service) {
                        break;
                    }
                }
            }
        }
        Err(last.unwrap_or(HarnessError::ServiceNotReady {
            service: service.name().into(),
            log_tail: String::new(),
        }))
    }

    fn spawn_task(&self, service: Service) -> Running {
        let (trigger, shutdown) = Shutdown::new();
        let url = self.nats_url.clone();
        let data_dir = self.data_dir.clone();
        let deadline = self.config.order_deadline;
        let clock: Arc<dyn Clock> = match &self.config.clock {
            Some(manual) => Arc::new(manual.clone()),
            None => clock::system(),
        };
        let gateway = self.payment_gateway();
        let stream_replicas = self.config.stream_replicas;
        let scale = shop_shell::scale::ScaleArgs {
            instance: None,
            lease_ttl: self.config.lease_ttl,
            release: None,
        };
        let handle = tokio::spawn(async move {
            match service {
                Service::Checkout => shop_checkout::run(
                    shop_checkout::Config {
                        nats: crate::client::service_nats(&url, service.name()),
                        data_dir,
                        stream_replicas,
                        order_deadline: deadline,
                        clock,
                        scale,
                    },
                    shutdown,
                )
                .await
                .map_err(|e| e.to_string()),
                Service::Inventory => shop_inventory::run(
                    shop_inventory::Config {
                        nats: crate::client::service_nats(&url, service.name()),
                        data_dir,
                        stream_replicas,
                        scale,
                    },
                    shutdown,
                )
                .await
                .map_err(|e| e.to_string()),
                Service::Payment => shop_payment::run(
                    shop_payment::Config {
                        nats: crate::client::service_nats(&url, service.name()),
                        data_dir,
                        stream_replicas,
                        gateway,
                        scale,
                    },
                    shutdown,
                )
                .await
                .map_err(|e| e.to_string()),
            }
        });
        Running::Task { trigger, handle }
    }

    fn spawn_process(&self, service: Service, bin_dir: &Path) -> Result<Running, HarnessError> {
        self.spawn_process_as(service, bin_dir, None)
    }

    /// Spawns the service's binary; `instance` names an instance of a scaled-out service
    /// (its log is `<instance>.log`, its database `<data dir>/<instance>`).
    fn spawn_process_as(
        &self,
        service: Service,
        bin_dir: &Path,
        instance: Option<&str>,
    ) -> Result<Running, HarnessError> {
        let own = bin_dir.join(service.name());
        let (program, args): (PathBuf, Vec<String>) = if own.exists() {
            (own, Vec::new())
        } else {
            // `cargo test -p shop` builds only `shop`, which can run any one service.
            (
                bin_dir.join("shop"),
                vec!["run".into(), "--services".into(), service.name().into()],
            )
        };
        let (log, log_file, log_err) = self.log_files(instance.unwrap_or(service.name()))?;
        let mut command = tokio::process::Command::new(&program);
        if let Some(instance) = instance {
            command.env("SHOP_INSTANCE", instance);
        }
        command
            .args(&args)
            .env("NATS_URL", &self.nats_url)
            .envs(crate::client::service_env(&self.nats_url, service.name()))
            .env("SHOP_DATA_DIR", &self.data_dir)
            .env(
                "SHOP_LEASE_TTL",
                format!("{}s", self.config.lease_ttl.as_secs()),
            )
            .env(
                "SHOP_ORDER_DEADLINE",
                format!("{}ms", self.config.order_deadline.as_millis()),
            )
            .env("SHOP_GATEWAY_URL", self.payment_gateway().url)
            .env("SHOP_LOG_FORMAT", "pretty")
            .env(
                "SHOP_STREAM_REPLICAS",
                self.config.stream_replicas.to_string(),
            )
            .env_remove("SHOP_CRASHPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        if let Some(points) = &self.config.crashpoints {
            command.env("SHOP_CRASHPOINT", points);
        }
        for (k, v) in &self.config.env {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawning {}", program.display()), e))?;
        Ok(Running::Process { child, log })
    }

    async fn wait_ready(&mut self, service: Service) -> Result<(), HarnessError> {
        let client = crate::connect(&self.nats_url).await?;
        // INFO rather than PING: a service answers PING as soon as it registers, but
        // its endpoints come one by one; the dead-letter endpoints are added last.
        let subject = format!("$SRV.INFO.{}", service.name());
        let deadline = tokio::time::Instant::now() + self.config.ready_within;
        let mut pause = Duration::from_millis(20);
        loop {
            if self.has_exited(service) {
                // In process, the task's own error says why; a process leaves its log.
                let why = match self.running.remove(&service) {
                    Some(Running::Task { handle, .. }) => match handle.await {
                        Ok(Ok(())) => "returned before it was ready".to_owned(),
                        Ok(Err(e)) => e,
                        Err(e) => format!("panicked or was cancelled: {e}"),
                    },
                    other => {
                        if let Some(running) = other {
                            self.running.insert(service, running);
                        }
                        format!("last log lines:\n{}", self.log_tail(service))
                    }
                };
                return Err(HarnessError::ServiceFailed {
                    service: service.name().into(),
                    reason: format!("exited while starting; {why}"),
                });
            }
            let reply = tokio::time::timeout(
                Duration::from_millis(500),
                client.request(subject.clone(), "".into()),
            )
            .await;
            let ready = reply
                .ok()
                .and_then(|r| r.ok())
                .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.payload).ok())
                .and_then(|info| {
                    info["endpoints"]
                        .as_array()
                        .map(|e| e.iter().any(|e| e["name"] == DISCARD_ENDPOINT))
                })
                .unwrap_or(false);
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HarnessError::ServiceNotReady {
                    service: service.name().into(),
                    log_tail: self.log_tail(service),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// The last lines a process-mode service wrote.
    pub fn log_tail(&self, service: Service) -> String {
        let path = self.data_dir.join(format!("{}.log", service.name()));
        std::fs::read_to_string(path)
            .map(|text| {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(30)..].join("\n")
            })
            .unwrap_or_default()
    }

    /// Stops a service gracefully (SIGTERM for processes).
    pub async fn stop_service(&mut self, service: Service) -> Result<(), HarnessError> {
        match self.running.remove(&service) {
            None => Ok(()),
            Some(Running::Task { trigger, handle }) => {
                trigger.fire();
                match tokio::time::timeout(Duration::from_secs(30), handle).await {
                    Ok(Ok(Ok(()))) => Ok(()),
                    Ok(Ok(Err(e))) => Err(HarnessError::ServiceFailed {
                        service: service.name().into(),
                        reason: e,
                    }),
                    Ok(Err(e)) => Err(HarnessError::ServiceFailed {
                        service: service.name().into(),
                        reason: e.to_string(),
                    }),
                    Err(_) => Err(HarnessError::ServiceFailed {
                        service: service.name().into(),
                        reason: "did not stop within 30 s".into(),
                    }),
                }
            }
            Some(Running::Process { mut child, .. }) => {
                terminate(&mut child)
                    .await
                    .map_err(|reason| HarnessError::ServiceFailed {
                        service: service.name().into(),
                        reason,
                    })
            }
        }
    }

    /// Kills a service without warning: SIGKILL for processes. In-process services
    /// cannot be killed without killing the test, so they are stopped gracefully.
    pub async fn kill_service(&mut self, service: Service) -> Result<(), HarnessError> {
        match self.running.remove(&service) {
            Some(Running::Process { mut child, .. }) => {
                let _ = child.kill().await;
                Ok(())
            }
            Some(task) => {
                self.running.insert(service, task);
                self.stop_service(service).await
            }
            None => Ok(()),
        }
    }

    /// Kills (process mode) or stops a service, then starts it again.
    pub async fn restart_service(&mut self, service: Service) -> Result<(), HarnessError> {
        self.kill_service(service).await?;
        self.start_service(service).await
    }

    /// Process mode: services that died on their own (crash points), restarted; returns which.
    pub async fn revive_crashed(&mut self) -> Result<Vec<Service>, HarnessError> {
        let mut dead = Vec::new();
        for (service, running) in self.running.iter_mut() {
            if let Running::Process { child, .. } = running {
                if let Ok(Some(_)) = child.try_wait() {
                    dead.push(*service);
                }
            }
        }
        for service in &dead {
            self.running.remove(service);
            self.start_service(*service).await?;
        }
        Ok(dead)
    }

    /// Stops every service gracefully, then the gateway simulator.
    pub async fn shutdown(mut self) -> Result<(), HarnessError> {
        let mut first_error = None;
        let named: Vec<(Service, String)> = self.instances.keys().cloned().collect();
        for (service, name) in named {
            if let Err(e) = self.stop_instance(service, &name).await {
                first_error.get_or_insert(e);
            }
        }
        for service in Service::ALL {
            if let Err(e) = self.stop_service(service).await {
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = self.stop_gateway().await {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Changes `SHOP_CRASHPOINT` for the processes started from now on.
    pub fn set_crashpoints(&mut self, spec: Option<String>) {
        self.config.crashpoints = spec;
    }

    /// Process mode: whether the service's process has exited (a crash point fired, say).
    pub fn has_exited(&mut self, service: Service) -> bool {
        match self.running.get_mut(&service) {
            Some(Running::Process { child, .. }) => matches!(child.try_wait(), Ok(Some(_))),
            Some(Running::Task { handle, .. }) => handle.is_finished(),
            None => true,
        }
    }

    /// Forgets a service that exited on its own, without starting it again.
    pub fn reap(&mut self, service: Service) {
        self.running.remove(&service);
    }

    /// Crash-point hits counted from the process logs, by point.
    pub fn crashpoint_hits(&self) -> BTreeMap<String, u32> {
        let mut hits = BTreeMap::new();
        for service in Service::ALL {
            let path = self.data_dir.join(format!("{}.log", service.name()));
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            for line in text.lines() {
                if let Some(point) = line.strip_prefix("SHOP_CRASHPOINT hit ") {
                    *hits.entry(point.trim().to_owned()).or_default() += 1;
                }
            }
        }
        hits
    }

    pub fn log_path(&self, service: Service) -> Option<&Path> {
        match self.running.get(&service) {
            Some(Running::Process { log, .. }) => Some(log),
            _ => None,
        }
    }
}

/// The payment gateway simulator: started before payment, stopped after everything.
impl Shop {
    /// The gateway's base URL, once it was started.
    pub fn gateway_url(&self) -> Option<String> {
        self.gateway_addr.map(|addr| format!("http://{addr}"))
    }

    pub fn is_gateway_running(&self) -> bool {
        self.gateway.is_some()
    }

    /// What payment calls the gateway with.
    fn payment_gateway(&self) -> HttpGatewayConfig {
        HttpGatewayConfig {
            url: self.gateway_url().unwrap_or_default(),
            concurrency: shop_payment::config::DEFAULT_GATEWAY_CONCURRENCY,
            timeout: Duration::from_secs(10),
        }
    }

    /// Starts the simulator unless it runs, and waits until it answers `GET /healthz`.
    pub async fn start_gateway(&mut self) -> Result<(), HarnessError> {
        if self.gateway.is_some() {
            return Ok(());
        }
        let binary = match &self.config.mode {
            Mode::Processes { bin_dir } => Some(bin_dir.join(GATEWAY_SIM)).filter(|p| p.exists()),
            Mode::InProcess => None,
        };
        let gateway = match binary {
            Some(program) => {
                let addr = match self.gateway_addr {
                    Some(addr) => addr,
                    None => free_local_addr()?,
                };
                self.gateway_addr = Some(addr);
                self.spawn_gateway_process(&program, addr)?
            }
            None => {
                if matches!(self.config.mode, Mode::Processes { .. }) {
                    // `cargo test -p shop` builds only `shop`; the simulator in this
                    // process serves the payment processes as well.
                    tracing::info!("no {GATEWAY_SIM} binary next to the others; serving the gateway from the test process");
                }
                let sim = self.start_gateway_task().await?;
                self.gateway_addr = Some(sim.addr());
                Gateway::Task(sim)
            }
        };
        self.gateway = Some(gateway);
        self.wait_gateway_ready().await
    }

    /// Opens the ledger and serves it from a task, on the address it had before if any.
    async fn start_gateway_task(&self) -> Result<Simulator, HarnessError> {
        let listen = self
            .gateway_addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let ledger = self.data_dir.join(shop_gateway_sim::LEDGER_DIR);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Simulator::start(listen, &ledger, self.config.gateway).await {
                Ok(sim) => return Ok(sim),
                // The previous simulator's last connection may still hold the ledger
                // (or the port) for a moment after it stopped.
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "gateway simulator not startable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(HarnessError::ServiceFailed {
                        service: GATEWAY_SIM.into(),
                        reason: e.to_string(),
                    })
                }
            }
        }
    }

    /// `<data_dir>/<name>.log`, opened for appending twice (a child's stdout and stderr).
    fn log_files(
        &self,
        name: &str,
    ) -> Result<(PathBuf, std::fs::File, std::fs::File), HarnessError> {
        let log = self.data_dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| HarnessError::io(format!("opening {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| HarnessError::io("cloning the log handle", e))?;
        Ok((log, out, err))
    }

    fn spawn_gateway_process(
        &self,
        program: &Path,
        addr: SocketAddr,
    ) -> Result<Gateway, HarnessError> {
        let (log, log_file, log_err) = self.log_files(GATEWAY_SIM)?;
        let mut command = tokio::process::Command::new(program);
        command
            .arg("--listen")
            .arg(addr.to_string())
            .env("SHOP_DATA_DIR", &self.data_dir)
            .env(
                "SHOP_GATEWAY_LATENCY",
                format!("{}us", self.config.gateway.latency.as_micros()),
            )
            .env(
                "SHOP_GATEWAY_FAILURE_RATE",
                self.config.gateway.failure_rate.to_string(),
            )
            .env("SHOP_LOG_FORMAT", "pretty")
            .env_remove("SHOP_CRASHPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_file))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true);
        for (k, v) in &self.config.env {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .map_err(|e| HarnessError::io(format!("spawning {}", program.display()), e))?;
        Ok(Gateway::Process { child, log })
    }

    async fn wait_gateway_ready(&mut self) -> Result<(), HarnessError> {
        let Some(addr) = self.gateway_addr else {
            return Ok(());
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut pause = Duration::from_millis(20);
        loop {
            if let Some(Gateway::Process { child, .. }) = &mut self.gateway {
                if let Ok(Some(status)) = child.try_wait() {
                    self.gateway = None;
                    return Err(HarnessError::ServiceFailed {
                        service: GATEWAY_SIM.into(),
                        reason: format!(
                            "exited with {status} while starting; last log lines:\n{}",
                            self.gateway_log_tail()
                        ),
                    });
                }
            }
            if healthz(addr).await {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(HarnessError::ServiceNotReady {
                    service: GATEWAY_SIM.into(),
                    log_tail: self.gateway_log_tail(),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Stops the simulator gracefully (SIGTERM for the process); its books stay.
    pub async fn stop_gateway(&mut self) -> Result<(), HarnessError> {
        let failed = |reason: String| HarnessError::ServiceFailed {
            service: GATEWAY_SIM.into(),
            reason,
        };
        match self.gateway.take() {
            None => Ok(()),
            Some(Gateway::Task(sim)) => sim.stop().await.map_err(|e| failed(e.to_string())),
            Some(Gateway::Process { mut child, .. }) => terminate(&mut child).await.map_err(failed),
        }
    }

    /// Kills the simulator (SIGKILL for the process; a task can only be stopped).
    pub async fn kill_gateway(&mut self) -> Result<(), HarnessError> {
        match self.gateway.take() {
            Some(Gateway::Process { mut child, .. }) => {
                let _ = child.kill().await;
                Ok(())
            }
            Some(task) => {
                self.gateway = Some(task);
                self.stop_gateway().await
            }
            None => Ok(()),
        }
    }

    /// Kills the simulator and starts it again on the same address with the same books.
    pub async fn restart_gateway(&mut self) -> Result<(), HarnessError> {
        self.kill_gateway().await?;
        self.start_gateway().await
    }

    /// The last lines the simulator's process wrote.
    pub fn gateway_log_tail(&self) -> String {
        let path = self.data_dir.join(format!("{GATEWAY_SIM}.log"));
        std::fs::read_to_string(path)
            .map(|text| {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(30)..].join("\n")
            })
            .unwrap_or_default()
    }

    pub fn gateway_log_path(&self) -> Option<&Path> {
        match &self.gateway {
            Some(Gateway::Process { log, .. }) => Some(log),
            _ => None,
        }
    }
}

/// The simulator's binary and log name.
const GATEWAY_SIM: &str = "gateway-sim";

/// An address on 127.0.0.1 that was free a moment ago, for a process to listen on.
fn free_local_addr() -> Result<SocketAddr, HarnessError> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map_err(|e| HarnessError::io("finding a free port for the gateway simulator", e))
}

/// Whether the simulator at `addr` answers `GET /healthz` with a 200; a raw HTTP/1.1
/// exchange, so the harness needs no HTTP client.
async fn healthz(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        Some(answer.starts_with(b"HTTP/1.1 200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), exchange).await,
        Ok(Some(true))
    )
}

/// Stops a child process the way an operator would: SIGTERM, then up to 30 s for a clean
/// exit (status 0); past that it is killed. `Err` says what went wrong.
async fn terminate(child: &mut tokio::process::Child) -> Result<(), String> {
    if let Some(pid) = child.id() {
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
    }
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("exited with {status} after SIGTERM")),
        _ => {
            let _ = child.kill().await;
            Err("did not exit within 30 s of SIGTERM".into())
        }
    }
}
