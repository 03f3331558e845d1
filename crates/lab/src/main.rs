//! `shop-lab`: the benchmark and the chaos suite. They start their own nats-server and
//! SIGKILL processes, so they ship apart from the operator's `shop` binary.

use anyhow::Context;
use clap::{Parser, Subcommand};
use shop_runtime::telemetry::{init_subscriber, init_subscriber_with_default, LogFormat};

#[global_allocator]
static ALLOCATOR: shop_runtime::Allocator = shop_runtime::Allocator;

/// The shop's lab: measure it against raw JetStream, or try to break it.
///
/// Both commands use the checkout, inventory and payment binaries next to this one,
/// and a nats-server from NATS_SERVER_BIN or PATH (`make bench`, `make chaos`).
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Log output: `pretty` for people, `json` for log shipping. Filter with RUST_LOG.
    #[arg(long, env = "SHOP_LOG_FORMAT", default_value = "pretty", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmark the shop against raw JetStream on this machine (see docs/BENCHMARKS.md).
    ///
    /// Starts its own nats-server with a fresh store, runs a raw-JetStream baseline with
    /// the same events, deliveries and payload sizes as the saga's happy path, then the
    /// three services as processes (the binaries next to this one), at each in-flight level.
    Bench {
        /// Measured window per level, after a few seconds of warm-up.
        #[arg(long, default_value = "20s", value_parser = shop_runtime::cli::parse_duration)]
        duration: std::time::Duration,
        /// Orders in flight, one level each.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        inflight: Vec<usize>,
        /// Stored-orders points to preload and measure, e.g. 10000,100000 (slow: see the doc).
        #[arg(long, value_delimiter = ',')]
        history: Vec<u64>,
        /// Print the report as JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Short windows for a smoke run; figures are indicative only.
        #[arg(long)]
        quick: bool,
        /// Only a scale curve, e.g. `payment=1,2,4`: orders/s against the number of
        /// instances of payment or checkout, each count on a fresh server, against a
        /// gateway of 100 ms per call (the baseline and in-flight levels are skipped).
        #[arg(long, value_parser = parse_scale, conflicts_with_all = ["inflight", "history"])]
        scale: Option<shop_bench::ScaleSpec>,
        /// Run both phases on a fresh three-node cluster instead of one server: every
        /// stream and KV bucket on three replicas, the services with `--replicas 3`.
        #[arg(long, conflicts_with = "scale")]
        cluster: bool,
    },
    /// Run the chaos scenario on a private nats-server and services as processes, then audit.
    ///
    /// Kills services with SIGKILL every few hundred milliseconds, restarts the broker,
    /// fires every crash point, re-publishes upstream events and injects malformed and
    /// oversized messages. Exits 1 if the books do not balance.
    Chaos {
        /// How many orders to drive.
        #[arg(long, default_value_t = 300)]
        orders: usize,
        /// Broker restarts during the run.
        #[arg(long, default_value_t = 1)]
        broker_restarts: u32,
        /// Probability of each crash point firing where it is reached.
        #[arg(long, default_value_t = 0.003)]
        crash_probability: f64,
        /// Random seed, to repeat a run.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Extra instances of checkout and payment (0: one of each); with extras the run
        /// also scales each up by one more instance and back down.
        #[arg(long, default_value_t = 1)]
        instances: usize,
        /// Run on a three-node cluster with R3 streams; each broker fault then kills or
        /// freezes (past an election timeout) the node that leads ORDERS.
        #[arg(long)]
        cluster: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_scale(text: &str) -> Result<shop_bench::ScaleSpec, String> {
    text.parse()
        .map_err(|e: shop_bench::BenchError| e.to_string())
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// The directory of this binary, where the service binaries are built next to it.
fn bin_dir() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe()?
        .parent()
        .map(std::path::Path::to_path_buf)
        .context("cannot locate the service binaries")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut stdout = std::io::stdout();
    match cli.command {
        Command::Bench {
            duration,
            inflight,
            history,
            json,
            quick,
            scale,
            cluster,
        } => {
            init_subscriber(cli.log_format);
            let opts = shop_bench::BenchOptions {
                duration,
                inflight,
                history,
                json,
                quick,
                cluster,
                ..shop_bench::BenchOptions::default()
            };
            match scale {
                Some(spec) => {
                    shop_bench::run_scale(opts, spec, &mut stdout.lock()).await?;
                }
                None => {
                    shop_bench::run(opts, &mut stdout.lock()).await?;
                }
            }
            Ok(())
        }
        Command::Chaos {
            orders,
            broker_restarts,
            crash_probability,
            seed,
            instances,
            cluster,
            json,
        } => {
            init_subscriber_with_default(cli.log_format, "warn");
            let mut opts = shop_chaos::ChaosOptions::short(bin_dir()?);
            opts.orders = orders;
            opts.broker_restarts = broker_restarts;
            opts.crash_probability = crash_probability;
            opts.seed = seed;
            opts.instances = instances;
            if cluster {
                opts.topology = shop_chaos::Topology::Cluster;
            }
            let report = if json {
                shop_chaos::run(opts, &mut std::io::sink()).await?
            } else {
                shop_chaos::run(opts, &mut stdout).await?
            };
            if json {
                print_json(&report)?;
            } else {
                shop_chaos::print_summary(&report, &mut stdout)?;
            }
            if report.violations > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
