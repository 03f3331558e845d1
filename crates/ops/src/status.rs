//! `shop status`: every service's group — its instances, the partitions each one holds,
//! and each partition's lag (events not yet acknowledged) and when it last made
//! progress. A partition without an owner makes the report unhealthy (the command exits
//! non-zero), because its orders wait until someone takes it.
//!
//! Read-only: the group bucket (`SHOP_GROUPS`) and the consumers' info, as an operator
//! could read them with `nats kv` and `nats consumer info`.

use std::collections::BTreeMap;
use std::io::Write;

use async_nats::jetstream;
use futures::StreamExt;
use serde::Serialize;
use shop_events::api::service;
use shop_events::partition::GROUPS_BUCKET;
use shop_events::stream::EVENT_STREAMS;
use time::OffsetDateTime;

use crate::OpsError;

/// One partition of one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    pub partition: u32,
    /// The instance holding its lease; `None`: nobody does.
    pub owner: Option<String>,
    /// Events delivered to none of its consumers yet, plus those awaiting an ack.
    pub lag: u64,
    /// RFC 3339 time of the last acknowledged event on any of its consumers.
    pub last_progress: Option<String>,
}

/// One service's group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    pub service: String,
    /// The recorded partition count; `None` if no instance ever joined.
    pub partitions: Option<u32>,
    /// Live instances and the partitions each holds.
    pub instances: BTreeMap<String, Vec<u32>>,
    pub by_partition: Vec<PartitionStatus>,
}

impl ServiceStatus {
    pub fn unowned(&self) -> Vec<u32> {
        self.by_partition
            .iter()
            .filter(|p| p.owner.is_none())
            .map(|p| p.partition)
            .collect()
    }
}

/// Every service's group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    pub services: Vec<ServiceStatus>,
}

impl StatusReport {
    /// Healthy: every service has joined and every partition has an owner.
    pub fn is_healthy(&self) -> bool {
        self.services
            .iter()
            .all(|s| s.partitions.is_some() && s.unowned().is_empty())
    }
}

/// Reads the groups and the consumers, prints the report (JSON with `json`).
pub async fn status(
    client: &async_nats::Client,
    json: bool,
    out: &mut impl Write,
) -> Result<StatusReport, OpsError> {
    let js = jetstream::new(client.clone());
    let consumers = consumer_lags(&js).await?;
    let mut services = Vec::new();
    for name in service::ALL {
        let group = shop_runtime::group::view(&js, GROUPS_BUCKET, name)
            .await
            .map_err(|e| OpsError::Stream {
                stream: format!("KV_{GROUPS_BUCKET}"),
                reason: e.to_string(),
            })?;
        let mut by_partition = Vec::new();
        for partition in 0..group.partitions.unwrap_or(0) {
            let which = (group.partitions != Some(1)).then_some(partition);
            let (lag, last) = consumers
                .get(&(name.to_owned(), which))
                .cloned()
                .unwrap_or_default();
            by_partition.push(PartitionStatus {
                partition,
                owner: group.leases.get(&partition).map(|l| l.owner.clone()),
                lag,
                last_progress: last.map(shop_events::envelope::format_time),
            });
        }
        services.push(ServiceStatus {
            service: name.to_owned(),
            partitions: group.partitions,
            instances: group.by_owner(),
            by_partition,
        });
    }
    let report = StatusReport { services };
    if json {
        serde_json::to_writer_pretty(&mut *out, &report)
            .map_err(|e| OpsError::Output(std::io::Error::other(e)))?;
        writeln!(out)?;
    } else {
        render(&report, out)?;
    }
    Ok(report)
}

/// Lag and last progress per consumer kind, summed over the streams: `(service,
/// Some(p))` for the per-partition consumers `<service>-pNN`, `(service, None)` for the
/// single consumer `<service>` of an active/standby service.
#[allow(clippy::type_complexity)]
async fn consumer_lags(
    js: &jetstream::Context,
) -> Result<BTreeMap<(String, Option<u32>), (u64, Option<OffsetDateTime>)>, OpsError> {
    let mut out: BTreeMap<(String, Option<u32>), (u64, Option<OffsetDateTime>)> = BTreeMap::new();
    for stream_name in EVENT_STREAMS {
        let Ok(stream) = js.get_stream(stream_name).await else {
            continue;
        };
        let mut infos = stream.consumers();
        while let Some(info) = infos.next().await {
            let info = info.map_err(|e| OpsError::Stream {
                stream: stream_name.to_owned(),
                reason: e.to_string(),
            })?;
            let key = match info.name.rsplit_once("-p") {
                Some((service, p)) => match p.parse::<u32>() {
                    Ok(p) => (service.to_owned(), Some(p)),
                    Err(_) => (info.name.clone(), None),
                },
                None => (info.name.clone(), None),
            };
            let slot = out.entry(key).or_default();
            slot.0 += info.num_pending + info.num_ack_pending as u64;
            slot.1 = slot.1.max(info.ack_floor.last_active);
        }
    }
    Ok(out)
}

fn render(report: &StatusReport, out: &mut impl Write) -> std::io::Result<()> {
    for service in &report.services {
        let Some(partitions) = service.partitions else {
            writeln!(out, "{}: no instance has ever joined\n", service.service)?;
            continue;
        };
        let live = service.instances.len();
        writeln!(
            out,
            "{} · {partitions} partition{} · {live} instance{}",
            service.service,
            if partitions == 1 { "" } else { "s" },
            if live == 1 { "" } else { "s" },
        )?;
        for (instance, held) in &service.instances {
            let held = if held.is_empty() {
                "standby (holds no partition)".to_owned()
            } else {
                format!("{} partition(s): {}", held.len(), ranges(held))
            };
            writeln!(out, "  {instance:<20} {held}")?;
        }
        writeln!(
            out,
            "  {:>9}  {:<20} {:>8}  last progress",
            "partition", "owner", "lag"
        )?;
        for p in &service.by_partition {
            writeln!(
                out,
                "  {:>9}  {:<20} {:>8}  {}",
                p.partition,
                p.owner.as_deref().unwrap_or("NO OWNER"),
                p.lag,
                p.last_progress.as_deref().unwrap_or("never")
            )?;
        }
        let unowned = service.unowned();
        if !unowned.is_empty() {
            writeln!(
                out,
                "  ✘ {} partition(s) without an owner: {} — their orders wait (see the runbook)",
                unowned.len(),
                ranges(&unowned)
            )?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "{}",
        if report.is_healthy() {
            "healthy: every partition has an owner"
        } else {
            "UNHEALTHY: some partition has no owner"
        }
    )
}

/// `0-3,7,9-10`.
fn ranges(partitions: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut iter = partitions.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_print_as_ranges() {
        assert_eq!(ranges(&[0, 1, 2, 3, 7, 9, 10]), "0-3,7,9-10");
        assert_eq!(ranges(&[5]), "5");
        assert_eq!(ranges(&[]), "");
    }

    #[test]
    fn a_partition_without_owner_is_unhealthy() {
        let service = |owner: Option<&str>| ServiceStatus {
            service: "payment".into(),
            partitions: Some(1),
            instances: BTreeMap::new(),
            by_partition: vec![PartitionStatus {
                partition: 0,
                owner: owner.map(str::to_owned),
                lag: 0,
                last_progress: None,
            }],
        };
        assert!(StatusReport {
            services: vec![service(Some("payment"))]
        }
        .is_healthy());
        assert!(!StatusReport {
            services: vec![service(None)]
        }
        .is_healthy());
    }
}
