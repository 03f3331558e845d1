//! `shop-bench`: the benchmark on its own, until `shop bench` wires the same library in.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use shop_bench::BenchOptions;

/// Raw-JetStream baseline versus the three services as processes; see docs/BENCHMARKS.md.
#[derive(Debug, Parser)]
#[command(name = "shop-bench", version)]
struct Args {
    /// Measured window per level, after a few seconds of warm-up.
    #[arg(long, default_value = "20s", value_parser = shop_runtime::cli::parse_duration)]
    duration: Duration,
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
    /// Directory of the checkout, inventory and payment binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Progress on stderr so that stdout carries only the table or the JSON.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let defaults = BenchOptions::default();
    let options = BenchOptions {
        duration: args.duration,
        inflight: args.inflight,
        bin_dir: args.bin_dir.unwrap_or(defaults.bin_dir),
        json: args.json,
        history: args.history,
        quick: args.quick,
    };
    match shop_bench::run(options, &mut std::io::stdout().lock()).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shop-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
