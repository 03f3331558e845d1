//! The short chaos run CI does: 300 orders while services are SIGKILLed, the broker
//! restarts, every crash point fires and hostile input arrives; then the books must balance.
//!
//! `SHOP_CHAOS_ORDERS` makes it longer (the long run in docs/RELIABILITY.md uses 5000) and
//! `SHOP_CHAOS_SEED` shakes it differently; `SHOP_CHAOS_INSTANCES` sets the instances of
//! checkout and payment beside their first (1 by default: two, scaled to three and back);
//! `shop chaos` runs the same scenario from the command line with a full report.

use std::path::Path;

use shop_chaos::{crash_points, run, ChaosOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_books_balance_after_kills_broker_restarts_crash_points_and_hostile_input(
) -> anyhow::Result<()> {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_shop"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let mut opts = ChaosOptions::short(bin_dir);
    if let Some(n) = std::env::var("SHOP_CHAOS_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.orders = n;
    }
    if let Some(seed) = std::env::var("SHOP_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.seed = seed;
    }
    if let Some(n) = std::env::var("SHOP_CHAOS_INSTANCES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts.instances = n;
    }
    let mut out = Vec::new();
    let result = run(opts.clone(), &mut out).await;
    println!("{}", String::from_utf8_lossy(&out));
    let report = result?;
    println!("{}", serde_json::to_string_pretty(&report)?);

    assert!(
        report.audit.violations.is_empty(),
        "audit violations: {:#?}",
        report.audit.violations
    );
    assert_eq!(report.violations, 0, "violations: {report:#?}");
    assert_eq!(
        report.outcomes.values().sum::<usize>(),
        opts.orders + report.expiring_orders,
        "every order settled: {:?}",
        report.outcomes
    );
    let timeouts = report
        .outcomes
        .get("cancelled:timeout")
        .copied()
        .unwrap_or(0);
    assert!(
        timeouts >= opts.expiring,
        "forced deadline expiries: {:?}",
        report.outcomes
    );
    assert_eq!(
        report.malformed_dead_lettered, report.malformed_injected,
        "every hostile message is in DEADLETTER"
    );
    for point in crash_points() {
        assert!(
            report.crashpoint_hits.get(point).copied().unwrap_or(0) > 0,
            "crash point {point} never fired: {:?}",
            report.crashpoint_hits
        );
    }
    assert!(
        report.kills.values().sum::<u32>() > 0,
        "services were killed"
    );
    assert_eq!(report.broker_restarts, opts.broker_restarts);
    if opts.instances > 0 {
        // The extra instances were killed too, and the group grew and shrank.
        assert!(
            report.kills.keys().any(|name| name.ends_with("-2")),
            "named instances were killed: {:?}",
            report.kills
        );
        assert!(
            report.scale_ups > 0 && report.scale_downs > 0,
            "scaled up {} and down {}",
            report.scale_ups,
            report.scale_downs
        );
    }
    Ok(())
}
