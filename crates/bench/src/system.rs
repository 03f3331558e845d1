//! The system under test: the three deployable service binaries as child processes,
//! durable commits on, stock replenished so that every order of the bench succeeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::Client;
use serde::Serialize;
use shop_harness::scenario::{replenish, wait_for_stock};
use shop_harness::{Mode, Service, Shop, ShopConfig};

use crate::payloads::SKUS;
use crate::procstat::{find_child, memory, Memory, Probe};
use crate::BenchError;

/// Units put on the shelf per sku: far more than any run sells (u32, as the contract says).
pub const STOCK_PER_SKU: u32 = 1_000_000_000;

/// The running shop plus what the bench measures about it.
pub struct System {
    shop: Shop,
    client: Client,
    services: Vec<Probe>,
}

impl std::fmt::Debug for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("System")
            .field("shop", &self.shop)
            .field("services", &self.services)
            .finish()
    }
}

/// A service's own counters (from its micro STATS), to see how well group commit batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Counters {
    pub events_processed: u64,
    pub group_commits: u64,
    pub events_published: u64,
}

impl Counters {
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            events_processed: self
                .events_processed
                .saturating_sub(earlier.events_processed),
            group_commits: self.group_commits.saturating_sub(earlier.group_commits),
            events_published: self
                .events_published
                .saturating_sub(earlier.events_published),
        }
    }

    /// Events per group commit (per sled flush of the consumer loop).
    pub fn batch_size(&self) -> f64 {
        if self.group_commits == 0 {
            0.0
        } else {
            self.events_processed as f64 / self.group_commits as f64
        }
    }
}

/// Whether `bin_dir` holds what process mode runs: the three binaries or `shop`.
pub fn check_binaries(bin_dir: &Path) -> Result<(), BenchError> {
    let all_three = Service::ALL
        .iter()
        .all(|s| bin_dir.join(s.name()).is_file());
    if all_three || bin_dir.join("shop").is_file() {
        Ok(())
    } else {
        Err(BenchError::Options(format!(
            "no checkout/inventory/payment binaries in {}; build them with \
             `cargo build --release -p shop-checkout -p shop-inventory -p shop-payment` \
             and pass --bin-dir target/release",
            bin_dir.display()
        )))
    }
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

impl System {
    /// Starts the three services as processes against `nats_url` and stocks the shelves.
    /// The services keep their databases under `data_dir` and their streams and KV
    /// buckets on `replicas` servers (3 on a cluster).
    pub async fn start(
        nats_url: &str,
        bin_dir: &Path,
        js: &Context,
        data_dir: &Path,
        replicas: usize,
    ) -> Result<System, BenchError> {
        check_binaries(bin_dir)?;
        let config = ShopConfig {
            mode: Mode::Processes {
                bin_dir: PathBuf::from(bin_dir),
            },
            data_dir: Some(data_dir.to_owned()),
            ..ShopConfig::default()
        }
        .stream_replicas(replicas);
        let shop = Shop::start(nats_url, config).await?;
        let services = Service::ALL
            .iter()
            .map(|s| Ok(Probe::new(s.name(), find_child(s.name())?)))
            .collect::<Result<Vec<_>, BenchError>>()?;
        let client = shop_harness::connect(nats_url).await?;
        stock_every_sku(js, &client).await?;
        Ok(System {
            shop,
            client,
            services,
        })
    }

    /// The three service processes.
    pub fn services(&self) -> &[Probe] {
        &self.services
    }

    /// Current and peak RSS of each service.
    pub fn memory(&self) -> Result<BTreeMap<String, Memory>, BenchError> {
        self.services
            .iter()
            .map(|p| Ok((p.label.clone(), memory(p.pid)?)))
            .collect()
    }

    /// Bytes the services keep on disk (sled databases and logs).
    pub fn disk_bytes(&self) -> u64 {
        dir_size(self.shop.data_dir())
    }

    /// Each service's counters right now; a service that does not answer is left out.
    pub async fn counters(&self) -> BTreeMap<String, Counters> {
        let mut all = BTreeMap::new();
        for service in Service::ALL {
            let subject = format!("$SRV.STATS.{}", service.name());
            let reply = tokio::time::timeout(
                Duration::from_secs(2),
                self.client.request(subject, "".into()),
            )
            .await;
            let Ok(Ok(reply)) = reply else {
                continue;
            };
            let Ok(stats) = serde_json::from_slice::<serde_json::Value>(&reply.payload) else {
                continue;
            };
            // Every endpoint carries the same service-wide snapshot as its `data`.
            let data = stats["endpoints"]
                .as_array()
                .and_then(|eps| eps.iter().find(|e| e["data"].is_object()))
                .map(|e| &e["data"]);
            if let Some(data) = data {
                let n = |key: &str| data[key].as_u64().unwrap_or(0);
                all.insert(
                    service.name().to_owned(),
                    Counters {
                        events_processed: n("events_processed"),
                        group_commits: n("group_commits"),
                        events_published: n("events_published"),
                    },
                );
            }
        }
        all
    }

    /// Stops the services gracefully.
    pub async fn stop(self) -> Result<(), BenchError> {
        self.shop.shutdown().await?;
        Ok(())
    }
}

/// Replenishes every sku the orders use and waits until inventory shows the stock.
pub(crate) async fn stock_every_sku(
    js: &async_nats::jetstream::Context,
    client: &async_nats::Client,
) -> Result<(), BenchError> {
    for sku in SKUS {
        replenish(js, sku, STOCK_PER_SKU).await?;
    }
    for sku in SKUS {
        wait_for_stock(
            client,
            sku,
            i64::from(STOCK_PER_SKU),
            0,
            Duration::from_secs(30),
        )
        .await?;
    }
    Ok(())
}
