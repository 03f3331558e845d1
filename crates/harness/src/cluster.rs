//! Three real `nats-server` processes routed into one JetStream cluster, for tests that
//! kill, restart or freeze a node under the shop.
//!
//! Shaped like nats-server's own cluster tests: one config template, three servers on
//! free ports with a name each, routes to every node, and waits for the meta leader and
//! each stream's leader before a test acts. A restarted node keeps its ports and store.
//! Like [`crate::NatsServer`], every node runs with the shop's generated authorization
//! (one auth directory for the three) unless started with [`NatsCluster::start_without_auth`].

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use futures::TryStreamExt;
use shop_auth::Role;
use shop_runtime::connect::NatsConfig;
use tempfile::TempDir;
use tokio::process::Child;

use crate::server::{
    auth_include, base_config, find_server_binary, free_ports, hard_kill, init_auth, log_tail,
    monitoring_get, send_signal, spawn_with_config, TEST_MAX_FILE_STORE,
};
use crate::wait::Backoff;
use crate::{eventually, HarnessError};

/// How many servers a [`NatsCluster`] runs: the smallest cluster that keeps a quorum
/// with one node down.
pub const CLUSTER_SIZE: usize = 3;

/// A partition lease TTL that outlasts the loss of any one node, for services run on a
/// [`NatsCluster`] whose nodes a test kills (`ShopConfig::lease_ttl`).
///
/// The group bucket (`SHOP_GROUPS`) is a stream like any other: when the node leading
/// it dies, every lease renewal and heartbeat answers "no responders" (there is no
/// leader to take the write, on any node) until the other two elect a new leader,
/// which nats-server's Raft does 4–9 s after they last heard from the old one, plus a
/// campaign, and more on a loaded machine. Measured in the rolling-restart test: 4.4 s
/// and 5.7 s. A lease must outlive that counted from its last renewal, which may be a
/// third of the TTL old when the node dies, and the group's retry adds up to 1 s: the
/// fence passes for 0.8 TTL, so a 30 s TTL survives a 13 s outage where the harness's
/// 3 s (a 2.4 s fence) lapsed on every election. Nothing is lost by the long TTL in the
/// cluster tests: their services are never killed, and one that stops leaves the group
/// and releases its leases.
pub const LEASE_TTL_ACROSS_A_NODE_LOSS: Duration = Duration::from_secs(30);

/// How long a fresh cluster may take to elect its meta leader; three servers starting
/// at once on two shared cores are slower than one.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a restarted node may take to rejoin and catch up (its `/healthz` waits for
/// its streams to be current).
const REJOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`NatsCluster::wait_stream_ready`] waits; an election after a leader is
/// lost takes a few seconds.
const STREAM_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one JetStream API request from the harness may take.
const API_TIMEOUT: Duration = Duration::from_secs(2);

/// Free ports are found by binding and releasing them, so another process may take one
/// in between; a fresh set of ports makes that race practically harmless.
const LAUNCH_ATTEMPTS: usize = 3;

/// One of the cluster's three nodes; only the cluster hands them out, so none is out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(usize);

impl NodeId {
    pub const ALL: [NodeId; CLUSTER_SIZE] = [NodeId(0), NodeId(1), NodeId(2)];

    /// 0, 1 or 2.
    pub fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// What a node's process is doing.
enum Process {
    Running(Child),
    /// Stopped with SIGSTOP: its sockets stay open but it answers nothing.
    Frozen(Child),
    Down,
}

struct Node {
    server_name: String,
    client_port: u16,
    cluster_port: u16,
    http_port: u16,
    dir: PathBuf,
    process: Process,
}

impl Node {
    fn conf_path(&self) -> PathBuf {
        self.dir.join("nats.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("nats-server.log")
    }

    fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// Takes the process, leaving the node [`Process::Down`].
    fn take_child(&mut self) -> Option<Child> {
        match std::mem::replace(&mut self.process, Process::Down) {
            Process::Running(child) | Process::Frozen(child) => Some(child),
            Process::Down => None,
        }
    }
}

/// Guard around a three-node JetStream cluster; dropping it kills every node and deletes
/// their stores.
pub struct NatsCluster {
    // Declared before `dir` so the processes are killed before their files are removed.
    nodes: Vec<Node>,
    bin: PathBuf,
    cluster_name: String,
    auth: bool,
    /// Each node's `max_file_store`; every node keeps a replica of every R3 stream.
    max_file_store: String,
    dir: TempDir,
}

/// The auth directory's name in the cluster's temp dir, next to the nodes' directories.
const AUTH_DIR: &str = "auth";

impl fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let states: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let state = match n.process {
                    Process::Running(_) => "running",
                    Process::Frozen(_) => "frozen",
                    Process::Down => "down",
                };
                format!("{} {} ({state})", n.server_name, n.url())
            })
            .collect();
        f.debug_struct("NatsCluster")
            .field("name", &self.cluster_name)
            .field("nodes", &states)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl NatsCluster {
    /// Starts three routed servers on free ports, each with a fresh store, and waits
    /// until every node is healthy and they agree on a meta leader.
    pub async fn start() -> Result<NatsCluster, HarnessError> {
        NatsCluster::start_with(true, TEST_MAX_FILE_STORE).await
    }

    /// [`NatsCluster::start`] accepting any client without credentials, for a test about
    /// something else on purpose.
    pub async fn start_without_auth() -> Result<NatsCluster, HarnessError> {
        NatsCluster::start_with(false, TEST_MAX_FILE_STORE).await
    }

    /// [`NatsCluster::start`] with a file store of `max_file_store` per node (nats-server's
    /// syntax, e.g. `16GB`) instead of a test's 1 GB: a benchmark's minutes of load outgrow it.
    pub async fn start_with_max_file_store(
        max_file_store: &str,
    ) -> Result<NatsCluster, HarnessError> {
        NatsCluster::start_with(true, max_file_store).await
    }

    async fn start_with(auth: bool, max_file_store: &str) -> Result<NatsCluster, HarnessError> {
        let bin = find_server_binary()?;
        let dir = tempfile::Builder::new()
            .prefix("shop-nats-cluster-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the cluster's temp dir", e))?;
        let mut cluster = NatsCluster {
            nodes: Vec::new(),
            bin,
            cluster_name: String::new(),
            auth,
            max_file_store: max_file_store.to_owned(),
            dir,
        };
        if let Some(auth_dir) = cluster.auth_dir() {
            init_auth(&auth_dir)?;
        }
        let mut attempt = 1;
        loop {
            cluster.lay_out()?;
            match cluster.launch_all().await {
                Ok(()) => {
                    if let Some(auth_dir) = cluster.auth_dir() {
                        for url in cluster.known_urls() {
                            crate::client::register_credentials(&url, &auth_dir);
                        }
                    }
                    return Ok(cluster);
                }
                // Most likely a port was taken between picking and binding: start over.
                Err(HarnessError::ServerExited { .. }) if attempt < LAUNCH_ATTEMPTS => {
                    attempt += 1;
                    cluster.kill_all().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The three client URLs, comma-separated, as `--nats-url` takes them.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The directory holding each role's key and `auth.conf`; `None` without auth.
    pub fn auth_dir(&self) -> Option<PathBuf> {
        self.auth.then(|| self.dir.path().join(AUTH_DIR))
    }

    /// How `role` connects to the cluster (every node): its key when it runs with auth.
    pub fn nats_config(&self, role: Role) -> NatsConfig {
        self.config_for(self.url(), role)
    }

    fn config_for(&self, url: String, role: Role) -> NatsConfig {
        let config = NatsConfig::new(url);
        match self.auth_dir() {
            Some(dir) => config.with_nkey(shop_auth::seed_path(&dir, role)),
            None => config,
        }
    }

    /// The cluster's URL list and each node's URL: what tests know it by.
    fn known_urls(&self) -> Vec<String> {
        std::iter::once(self.url())
            .chain(NodeId::ALL.into_iter().map(|id| self.node_url(id)))
            .collect()
    }

    /// One node's client URL; it stays the same across restarts.
    pub fn node_url(&self, node: NodeId) -> String {
        self.node(node).url()
    }

    /// `http://127.0.0.1:<monitoring port>` of one node.
    pub fn monitoring_url(&self, node: NodeId) -> String {
        format!("http://127.0.0.1:{}", self.node(node).http_port)
    }

    /// The node's `server_name`, as stream info names leaders and replicas.
    pub fn server_name(&self, node: NodeId) -> &str {
        &self.node(node).server_name
    }

    /// The node's JetStream store; it outlives restarts and is deleted on drop.
    pub fn store_dir(&self, node: NodeId) -> PathBuf {
        self.node(node).store_dir()
    }

    /// The node's combined stdout and stderr, appended to across restarts.
    pub fn log_path(&self, node: NodeId) -> PathBuf {
        self.node(node).log_path()
    }

    /// The last lines of the node's log, for assertion messages.
    pub fn log_tail(&self, node: NodeId) -> String {
        log_tail(&self.node(node).log_path())
    }

    /// Whether the node has a process that is not frozen.
    pub fn is_running(&self, node: NodeId) -> bool {
        matches!(self.node(node).process, Process::Running(_))
    }

    /// Whether the node is stopped with [`NatsCluster::freeze`].
    pub fn is_frozen(&self, node: NodeId) -> bool {
        matches!(self.node(node).process, Process::Frozen(_))
    }

    /// Kills the node abruptly (SIGKILL), as a crash or power cut would. Frozen nodes die
    /// too; a node that is already down stays down.
    pub async fn kill(&mut self, node: NodeId) -> Result<(), HarnessError> {
        match self.nodes[node.0].take_child() {
            Some(mut child) => hard_kill(&mut child).await,
            None => Ok(()),
        }
    }

    /// Starts the node again on the same ports with the same store (killing it first if it
    /// is up or frozen), and waits until it is healthy and current with the meta leader.
    pub async fn restart(&mut self, node: NodeId) -> Result<(), HarnessError> {
        self.kill(node).await?;
        self.launch(node)?;
        self.wait_node_rejoined(node).await
    }

    /// Stops the node's process with SIGSTOP: its connections stay open but nothing is
    /// answered, as with a long GC pause or a hung VM. A frozen node stays frozen.
    pub async fn freeze(&mut self, node: NodeId) -> Result<(), HarnessError> {
        let slot = &mut self.nodes[node.0];
        let child = match &slot.process {
            Process::Running(child) => child,
            Process::Frozen(_) => return Ok(()),
            Process::Down => return Err(HarnessError::ServerStopped),
        };
        if !send_signal(child, "STOP").await {
            return Err(signal_failed("STOP", node));
        }
        if let Some(child) = slot.take_child() {
            slot.process = Process::Frozen(child);
        }
        Ok(())
    }

    /// Resumes a frozen node with SIGCONT; a running node is left alone.
    pub async fn thaw(&mut self, node: NodeId) -> Result<(), HarnessError> {
        let slot = &mut self.nodes[node.0];
        let child = match &slot.process {
            Process::Frozen(child) => child,
            Process::Running(_) => return Ok(()),
            Process::Down => return Err(HarnessError::ServerStopped),
        };
        if !send_signal(child, "CONT").await {
            return Err(signal_failed("CONT", node));
        }
        if let Some(child) = slot.take_child() {
            slot.process = Process::Running(child);
        }
        Ok(())
    }

    /// The meta leader as the running nodes' `/jsz` reports it, if they know one.
    pub async fn meta_leader(&self) -> Option<NodeId> {
        for node in self.running_nodes() {
            if let Some(leader) = self.meta_leader_seen_by(node).await {
                return Some(leader);
            }
        }
        None
    }

    /// Stream info, asked through the running nodes only (a frozen node would hold the
    /// request until it timed out).
    pub async fn stream_info(&self, stream_name: &str) -> Result<stream::Info, HarnessError> {
        let js = self.jetstream().await?;
        let failed = |e: &dyn fmt::Display| {
            HarnessError::JetStream(format!("stream info of {stream_name}: {e}"))
        };
        js.get_stream(stream_name)
            .await
            .map_err(|e| failed(&e))?
            .get_info()
            .await
            .map_err(|e| failed(&e))
    }

    /// The node that leads the stream's replicas right now.
    pub async fn leader_of(&self, stream_name: &str) -> Result<NodeId, HarnessError> {
        let info = self.stream_info(stream_name).await?;
        let leader = info
            .cluster
            .and_then(|c| c.leader)
            .filter(|name| !name.is_empty())
            .ok_or_else(|| {
                HarnessError::JetStream(format!("stream {stream_name} has no leader right now"))
            })?;
        self.node_named(&leader).ok_or_else(|| {
            HarnessError::JetStream(format!(
                "stream {stream_name} is led by {leader}, which is not in this cluster"
            ))
        })
    }

    /// Waits until the stream has a leader and every replica is current (none offline,
    /// none lagging), as a test must before it kills a node under the stream.
    pub async fn wait_stream_ready(&self, stream_name: &str) -> Result<(), HarnessError> {
        let what = format!("stream {stream_name} to have a leader and every replica current");
        let ready = eventually(STREAM_READY_TIMEOUT, &what, || async {
            let info = self.stream_info(stream_name).await.ok()?;
            replicas_state(&info).is_ok().then_some(())
        })
        .await;
        match ready {
            Ok(()) => Ok(()),
            Err(HarnessError::Timeout { after, .. }) => {
                let last = match self.stream_info(stream_name).await {
                    Ok(info) => replicas_state(&info).err().unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                Err(HarnessError::Timeout {
                    what: format!("{what} (last seen: {last})"),
                    after,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The name of every stream on the cluster: the shop's, and the `KV_…` streams behind
    /// its KV buckets (partition leases, state changelogs), which need a quorum as much.
    pub async fn stream_names(&self) -> Result<Vec<String>, HarnessError> {
        let js = self.jetstream().await?;
        let mut names: Vec<String> = js
            .stream_names()
            .try_collect()
            .await
            .map_err(|e| HarnessError::JetStream(format!("listing streams: {e}")))?;
        names.sort();
        Ok(names)
    }

    /// [`NatsCluster::wait_stream_ready`] for every stream on the cluster, one after the
    /// other: what a test waits for after a node comes back, before it touches the next.
    pub async fn wait_every_stream_ready(&self) -> Result<Vec<String>, HarnessError> {
        let names = eventually(STREAM_READY_TIMEOUT, "the list of streams", || async {
            self.stream_names().await.ok()
        })
        .await?;
        for name in &names {
            self.wait_stream_ready(name).await?;
        }
        Ok(names)
    }

    fn node(&self, node: NodeId) -> &Node {
        &self.nodes[node.0]
    }

    fn node_named(&self, server_name: &str) -> Option<NodeId> {
        NodeId::ALL
            .into_iter()
            .find(|id| self.nodes[id.0].server_name == server_name)
    }

    fn running_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        NodeId::ALL.into_iter().filter(|id| self.is_running(*id))
    }

    /// A JetStream context on a fresh connection to the running nodes only, so that a
    /// frozen or killed node never holds a harness request.
    async fn jetstream(&self) -> Result<jetstream::Context, HarnessError> {
        let urls: Vec<String> = self.running_nodes().map(|id| self.node_url(id)).collect();
        if urls.is_empty() {
            return Err(HarnessError::ServerStopped);
        }
        let options = self
            .config_for(urls.join(","), Role::Admin)
            .options()
            .map_err(|e| HarnessError::Connect {
                url: urls.join(","),
                after: API_TIMEOUT,
                reason: e.to_string(),
            })?;
        let client = options
            .name("shop-harness-cluster")
            .connection_timeout(API_TIMEOUT)
            .ignore_discovered_servers()
            .connect(urls.iter().map(String::as_str).collect::<Vec<_>>())
            .await
            .map_err(|e| HarnessError::Connect {
                url: urls.join(","),
                after: API_TIMEOUT,
                reason: e.to_string(),
            })?;
        let mut js = jetstream::new(client);
        js.set_timeout(API_TIMEOUT);
        Ok(js)
    }

    /// Picks fresh ports, names and directories for the three nodes and writes nothing yet.
    fn lay_out(&mut self) -> Result<(), HarnessError> {
        let ports = free_ports(3 * CLUSTER_SIZE)?;
        // Unique per cluster, so the logs of tests running side by side never mix up.
        self.cluster_name = format!("shop-harness-{}", ports[0]);
        self.nodes = NodeId::ALL
            .iter()
            .map(|id| {
                let dir = self.dir.path().join(id.to_string());
                // A retry starts from nothing: a half-formed cluster's store would
                // remember peers that no longer exist.
                if dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .map_err(|e| HarnessError::io("clearing a node's directory", e))?;
                }
                std::fs::create_dir_all(&dir)
                    .map_err(|e| HarnessError::io("creating a node's directory", e))?;
                Ok(Node {
                    server_name: format!("{}-{id}", self.cluster_name),
                    client_port: ports[3 * id.0],
                    cluster_port: ports[3 * id.0 + 1],
                    http_port: ports[3 * id.0 + 2],
                    dir,
                    process: Process::Down,
                })
            })
            .collect::<Result<_, HarnessError>>()?;
        Ok(())
    }

    /// Spawns all three nodes together (none can elect a meta leader alone), then waits
    /// until each is healthy and they agree on the meta leader.
    async fn launch_all(&mut self) -> Result<(), HarnessError> {
        for node in NodeId::ALL {
            self.launch(node)?;
        }
        let started = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            for node in NodeId::ALL {
                self.check_alive(node)?;
            }
            if self.formed().await {
                return Ok(());
            }
            if started.elapsed() >= FORM_TIMEOUT {
                return Err(self.not_ready(None, FORM_TIMEOUT));
            }
            backoff.sleep().await;
        }
    }

    /// Whether every node is healthy and all see the same meta leader.
    async fn formed(&self) -> bool {
        let mut leaders = Vec::with_capacity(CLUSTER_SIZE);
        for node in NodeId::ALL {
            if monitoring_get(self.node(node).http_port, "/healthz")
                .await
                .is_none()
            {
                return false;
            }
            match self.meta_leader_seen_by(node).await {
                Some(leader) => leaders.push(leader),
                None => return false,
            }
        }
        if !leaders.windows(2).all(|pair| pair[0] == pair[1]) {
            return false;
        }
        self.meta_peers_current(leaders[0]).await
    }

    /// Whether the meta leader, asked itself, counts every other node as a current,
    /// online peer. Healthy nodes that agree on a leader are not yet enough: a service
    /// that created its R3 state bucket right then was refused with "no suitable peers
    /// for placement, peer offline" (10005), the leader not having heard from a peer yet.
    async fn meta_peers_current(&self, leader: NodeId) -> bool {
        let Some(body) = monitoring_get(self.node(leader).http_port, "/jsz").await else {
            return false;
        };
        let Ok(jsz) = serde_json::from_str::<serde_json::Value>(&body) else {
            return false;
        };
        let Some(peers) = jsz["meta_cluster"]["replicas"].as_array() else {
            return false;
        };
        peers.len() == CLUSTER_SIZE - 1
            && peers.iter().all(|peer| {
                peer["current"].as_bool() == Some(true) && peer["offline"].as_bool() != Some(true)
            })
    }

    /// Waits until a restarted node answers `/healthz` (current with the meta leader and
    /// its streams), knows the meta leader, and the meta leader counts it (and the
    /// other node) as a current peer again.
    async fn wait_node_rejoined(&mut self, node: NodeId) -> Result<(), HarnessError> {
        let started = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            self.check_alive(node)?;
            let healthy = monitoring_get(self.node(node).http_port, "/healthz")
                .await
                .is_some();
            let leader = if healthy {
                self.meta_leader_seen_by(node).await
            } else {
                None
            };
            if let Some(leader) = leader {
                if self.meta_peers_current(leader).await {
                    return Ok(());
                }
            }
            if started.elapsed() >= REJOIN_TIMEOUT {
                let error = self.not_ready(Some(node), REJOIN_TIMEOUT);
                // Leave nothing half-started behind; the error already carries the log.
                let _ = self.kill(node).await;
                return Err(error);
            }
            backoff.sleep().await;
        }
    }

    async fn meta_leader_seen_by(&self, node: NodeId) -> Option<NodeId> {
        let body = monitoring_get(self.node(node).http_port, "/jsz").await?;
        let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
        let leader = jsz["meta_cluster"]["leader"].as_str()?;
        self.node_named(leader)
    }

    /// Writes the node's config and spawns it; does not wait.
    fn launch(&mut self, node: NodeId) -> Result<(), HarnessError> {
        let config = self.config_text(node);
        let slot = &mut self.nodes[node.0];
        let child = spawn_with_config(&self.bin, &slot.conf_path(), &config, &slot.log_path())?;
        slot.process = Process::Running(child);
        Ok(())
    }

    fn config_text(&self, node: NodeId) -> String {
        let this = self.node(node);
        let routes = self
            .nodes
            .iter()
            .map(|n| format!("    nats-route://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join("\n");
        let mut base = base_config(
            this.client_port,
            this.http_port,
            &this.server_name,
            &this.store_dir(),
            &self.max_file_store,
        );
        if self.auth {
            // The nodes' directories sit next to the shared auth directory.
            base.push_str(&auth_include(&format!("../{AUTH_DIR}")));
        }
        // Every node lists every route, itself included (a server skips its own), so
        // all three configs come from one template.
        format!(
            "{base}\
             cluster {{\n\
             \x20 name: {name}\n\
             \x20 listen: 127.0.0.1:{cluster_port}\n\
             \x20 routes: [\n{routes}\n  ]\n\
             }}\n",
            name = self.cluster_name,
            cluster_port = this.cluster_port,
        )
    }

    /// Fails with the node's log if its process has exited on its own.
    fn check_alive(&mut self, node: NodeId) -> Result<(), HarnessError> {
        let slot = &mut self.nodes[node.0];
        let Process::Running(child) = &mut slot.process else {
            return Ok(());
        };
        let exited = child
            .try_wait()
            .map_err(|e| HarnessError::io("checking on nats-server", e))?;
        match exited {
            Some(status) => {
                slot.process = Process::Down;
                Err(HarnessError::ServerExited {
                    status: format!("{node}: {status}"),
                    log_tail: log_tail(&slot.log_path()),
                })
            }
            None => Ok(()),
        }
    }

    fn not_ready(&self, node: Option<NodeId>, after: Duration) -> HarnessError {
        let nodes: Vec<NodeId> = match node {
            Some(node) => vec![node],
            None => NodeId::ALL.to_vec(),
        };
        let log_tail = nodes
            .iter()
            .map(|n| format!("--- {n} ---\n{}", self.log_tail(*n)))
            .collect::<Vec<_>>()
            .join("\n");
        let url = match node {
            Some(node) => self.node_url(node),
            None => self.url(),
        };
        HarnessError::ServerNotReady {
            url,
            after,
            log_tail,
        }
    }

    async fn kill_all(&mut self) {
        for node in NodeId::ALL {
            let _ = self.kill(node).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for url in self.known_urls() {
            crate::client::forget_credentials(&url);
        }
        if std::env::var_os(crate::server::KEEP_STORE_ENV).is_some() {
            self.dir.disable_cleanup(true);
            eprintln!(
                "{}: the cluster's stores are kept in {}",
                crate::server::KEEP_STORE_ENV,
                self.dir.path().display()
            );
        }
        let mut children: Vec<Child> = self.nodes.iter_mut().filter_map(Node::take_child).collect();
        // SIGKILL ends frozen processes too.
        for child in &mut children {
            let _ = child.start_kill();
        }
        // Give the processes a moment to die so the TempDir removal that follows does not
        // race with a server still writing into its store.
        let deadline = Instant::now() + Duration::from_secs(2);
        for child in &mut children {
            while Instant::now() < deadline {
                match child.try_wait() {
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    _ => break,
                }
            }
        }
    }
}

/// `Ok` when the stream has a leader and all its replicas are current and online;
/// otherwise what is missing, for the timeout message.
fn replicas_state(info: &stream::Info) -> Result<(), String> {
    let Some(cluster) = &info.cluster else {
        return Err("no cluster info".into());
    };
    let leader = cluster.leader.as_deref().unwrap_or_default();
    if leader.is_empty() {
        return Err("no leader".into());
    }
    let wanted = info.config.num_replicas.max(1) - 1;
    if cluster.replicas.len() < wanted {
        return Err(format!(
            "leader {leader}, {} of {wanted} followers known",
            cluster.replicas.len()
        ));
    }
    let behind: Vec<String> = cluster
        .replicas
        .iter()
        .filter(|peer| !peer.current || peer.offline)
        .map(|peer| {
            format!(
                "{} (current: {}, offline: {}, lag: {:?})",
                peer.name, peer.current, peer.offline, peer.lag
            )
        })
        .collect();
    if behind.is_empty() {
        Ok(())
    } else {
        Err(format!("leader {leader}, behind: {}", behind.join(", ")))
    }
}

fn signal_failed(signal: &str, node: NodeId) -> HarnessError {
    HarnessError::io(
        format!("sending SIG{signal} to {node}"),
        std::io::Error::other("the `kill` command failed"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_cover_the_cluster_once_each() {
        let indexes: Vec<usize> = NodeId::ALL.iter().map(|n| n.index()).collect();
        assert_eq!(indexes, vec![0, 1, 2]);
        assert_eq!(NodeId::ALL[1].to_string(), "n1");
    }
}
