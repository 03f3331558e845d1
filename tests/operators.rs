//! The operator surface: ADR-32 PING/INFO/STATS of every service, and every endpoint's
//! success and error replies, against a real nats-server and the services in-process.

mod common;

use shop_events::api::checkout::OrderStatus;
use shop_events::api::checkout::{ORDERS_CANCEL, ORDERS_GET, ORDERS_LIST, ORDERS_PLACE};
use shop_events::api::inventory::{STOCK_GET, STOCK_LIST, STOCK_REPLENISH};
use shop_events::api::payment::PaymentStatus;
use shop_events::api::payment::{GATEWAY_LEDGER, PAYMENTS_GET};
use shop_events::CancelReason;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use shop_harness::scenario::{
    order, place, replenish, wait_for_status, wait_for_stock, wait_settled,
};
use shop_harness::{eventually, Service, ShopConfig};

use common::{call, call_err, call_ok, call_raw, counters, micro, world, SETTLE};

/// The version every service reports: they all share the workspace version.
const VERSION: &str = env!("CARGO_PKG_VERSION");

const CONSUMER_COUNTERS: [&str; 5] = [
    "events_processed",
    "events_redelivered",
    "events_dead_lettered",
    "outbox_backlog",
    "last_error",
];

fn expected_subjects(service: Service) -> BTreeSet<String> {
    let own: &[&str] = match service {
        Service::Checkout => &[
            ORDERS_PLACE.subject,
            ORDERS_GET.subject,
            ORDERS_CANCEL.subject,
            ORDERS_LIST.subject,
        ],
        Service::Inventory => &[
            STOCK_GET.subject,
            STOCK_LIST.subject,
            STOCK_REPLENISH.subject,
        ],
        Service::Payment => &[PAYMENTS_GET.subject, GATEWAY_LEDGER.subject],
    };
    own.iter()
        .map(|s| s.to_string())
        .chain(
            shop_events::api::deadletters::endpoints(service.name())
                .into_iter()
                .map(|(_, subject)| subject),
        )
        .collect()
}

/// `MAJOR.MINOR.PATCH` with an optional pre-release or build suffix, as ADR-32 requires.
fn is_semver(version: &str) -> bool {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p.len() == 1 || !p.starts_with('0'))
        })
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[tokio::test]
async fn every_service_describes_itself_and_its_endpoints_on_info() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    for service in Service::ALL {
        let info = micro(&w.client, "INFO", service.name()).await?;
        assert_eq!(info["type"], "io.nats.micro.v1.info_response", "{info}");
        assert_eq!(info["name"], service.name(), "{info}");
        assert!(
            info["id"].as_str().is_some_and(|id| !id.is_empty()),
            "{info}"
        );
        assert_eq!(info["version"], VERSION, "{info}");
        assert!(is_semver(VERSION), "{VERSION} is not semver");
        assert!(
            info["description"]
                .as_str()
                .is_some_and(|d| !d.trim().is_empty()),
            "{info}"
        );
        let metadata = info["metadata"].as_object().expect("metadata object");
        assert!(
            metadata.contains_key("streams"),
            "{service} metadata names its streams: {info}"
        );

        let endpoints = info["endpoints"].as_array().expect("endpoints");
        let mut subjects = BTreeSet::new();
        for endpoint in endpoints {
            let name = endpoint["name"].as_str().unwrap_or_default();
            assert!(is_valid_name(name), "bad endpoint name {endpoint}");
            assert!(
                endpoint["queue_group"].as_str().is_some(),
                "queue group: {endpoint}"
            );
            subjects.insert(endpoint["subject"].as_str().unwrap_or_default().to_owned());
        }
        assert_eq!(subjects, expected_subjects(service), "{service}");
        let names: BTreeSet<&str> = endpoints
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert_eq!(
            names.len(),
            endpoints.len(),
            "endpoint names are unique: {info}"
        );
    }
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn every_service_answers_ping_by_name_and_all_answer_a_bare_ping() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    for service in Service::ALL {
        let pong = micro(&w.client, "PING", service.name()).await?;
        assert_eq!(pong["type"], "io.nats.micro.v1.ping_response", "{pong}");
        assert_eq!(pong["name"], service.name(), "{pong}");
        assert_eq!(pong["version"], VERSION, "{pong}");
        assert!(
            pong["id"].as_str().is_some_and(|id| !id.is_empty()),
            "{pong}"
        );
    }

    // `$SRV.PING` without a name is a discovery request: every service answers it.
    let inbox = w.client.new_inbox();
    let mut replies = w.client.subscribe(inbox.clone()).await?;
    w.client
        .publish_with_reply("$SRV.PING", inbox, "".into())
        .await?;
    let mut seen = BTreeMap::new();
    tokio::time::timeout(SETTLE, async {
        while seen.len() < Service::ALL.len() {
            let Some(message) = replies.next().await else {
                break;
            };
            let pong: Value = serde_json::from_slice(&message.payload)?;
            assert_eq!(pong["type"], "io.nats.micro.v1.ping_response", "{pong}");
            let name = pong["name"].as_str().unwrap_or_default().to_owned();
            seen.insert(name, pong);
        }
        anyhow::Ok(())
    })
    .await??;
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["checkout", "inventory", "payment"]
    );
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn stats_carry_the_consumer_counters_and_count_processed_events() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    for service in Service::ALL {
        let stats = micro(&w.client, "STATS", service.name()).await?;
        assert_eq!(stats["type"], "io.nats.micro.v1.stats_response", "{stats}");
        assert_eq!(stats["name"], service.name(), "{stats}");
        assert_eq!(stats["version"], VERSION, "{stats}");
        let started = stats["started"].as_str().expect("started");
        time::OffsetDateTime::parse(started, &time::format_description::well_known::Rfc3339)
            .map_err(|e| anyhow::anyhow!("started `{started}` is not RFC 3339: {e}"))?;
        let endpoints = stats["endpoints"].as_array().expect("endpoints");
        assert_eq!(endpoints.len(), expected_subjects(service).len(), "{stats}");
        for endpoint in endpoints {
            assert!(endpoint["num_requests"].is_u64(), "{endpoint}");
            assert!(endpoint["num_errors"].is_u64(), "{endpoint}");
            let data = endpoint["data"].as_object().expect("endpoint data");
            for name in CONSUMER_COUNTERS {
                assert!(data.contains_key(name), "{service}: {name} in {endpoint}");
            }
            assert_eq!(data["events_processed"], 0, "nothing happened yet");
            assert_eq!(data["outbox_backlog"], 0);
        }
    }

    replenish(&w.js, "sku-stats", 5).await?;
    // The replenishment and the order travel on different consumers: wait for the stock,
    // or the order may be judged before the shelf is filled.
    wait_for_stock(&w.client, "sku-stats", 5, 0, SETTLE).await?;
    place(
        &w.js,
        order("o-stats", &[("sku-stats", 1, 100)], "tok_visa"),
    )
    .await?;
    wait_for_status(&w.client, "o-stats", OrderStatus::Confirmed, SETTLE).await?;
    for service in Service::ALL {
        let data = eventually(SETTLE, &format!("{service} to count events"), || async {
            let data = counters(&w.client, service).await.ok()?;
            (data["events_processed"].as_u64()? > 0).then_some(data)
        })
        .await?;
        assert_eq!(data["events_dead_lettered"], 0, "{service}: {data}");
    }
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn placing_an_order_through_the_api_accepts_it_once_and_refuses_bad_ones(
) -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    replenish(&w.js, "sku-api", 10).await?;
    wait_for_stock(&w.client, "sku-api", 10, 0, SETTLE).await?;

    let placed = order("o-api", &[("sku-api", 2, 1250)], "tok_visa");
    let accepted = call_ok(&w.client, ORDERS_PLACE.subject, json!(placed)).await?;
    assert_eq!(accepted["order_id"], "o-api");
    assert_eq!(accepted["status"], "pending");
    assert!(accepted["event_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    let view = wait_for_status(&w.client, "o-api", OrderStatus::Confirmed, SETTLE).await?;
    assert_eq!(view.total, 2500);

    // The same order again is answered with where it stands, and nothing happens twice.
    let again = call_ok(&w.client, ORDERS_PLACE.subject, json!(placed)).await?;
    assert_eq!(again["order_id"], "o-api");
    assert_eq!(again["status"], "confirmed");
    common::wait_idle(&w.client, &w.js).await?;
    wait_for_stock(&w.client, "sku-api", 8, 0, SETTLE).await?;

    // The same id with different data is refused, and the first order stands.
    let other = order("o-api", &[("sku-api", 3, 1250)], "tok_visa");
    let (code, description) = call_err(&w.client, ORDERS_PLACE.subject, json!(other)).await?;
    assert_eq!(code, 400);
    assert!(description.contains("o-api"), "{description}");
    let view = call_ok(&w.client, ORDERS_GET.subject, json!({"order_id": "o-api"})).await?;
    assert_eq!(view["total"], 2500);
    assert_eq!(view["status"], "confirmed");

    // Every problem is listed at once.
    let mut bad = order("o-api-bad", &[("sku-api", 0, 100), ("sku-api", 1, -5)], "");
    bad.total = 7;
    let problems = bad.validate().expect_err("the order is invalid");
    assert!(problems.len() >= 5, "{problems:?}");
    let (code, description) = call_err(&w.client, ORDERS_PLACE.subject, json!(bad)).await?;
    assert_eq!(code, 400);
    assert!(
        description.contains(&format!("{} problem(s)", problems.len())),
        "{description}"
    );
    for problem in &problems {
        assert!(
            description.contains(&format!("{}: {}", problem.field, problem.message)),
            "{problem:?} missing from {description}"
        );
    }
    let unknown = call_err(
        &w.client,
        ORDERS_GET.subject,
        json!({"order_id": "o-api-bad"}),
    )
    .await?;
    assert_eq!(unknown.0, 404, "a refused order is not recorded");

    // Bodies that are not an order at all.
    let (code, description) = call_raw(&w.client, ORDERS_PLACE.subject, b"{not json")
        .await?
        .expect_err("bad JSON is refused");
    assert_eq!(code, 400);
    assert!(description.contains("JSON"), "{description}");
    let (code, _) = call_err(&w.client, ORDERS_PLACE.subject, json!({"order_id": "o-x"})).await?;
    assert_eq!(code, 400, "missing fields");
    let mut bad_id = json!(order("o-y", &[("sku-api", 1, 1)], "tok_visa"));
    bad_id["order_id"] = json!("not an id!");
    let (code, description) = call_err(&w.client, ORDERS_PLACE.subject, bad_id).await?;
    assert_eq!(code, 400);
    assert!(description.contains("not an id!"), "{description}");

    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn getting_an_order_shows_its_lines_total_and_times_or_says_why_not() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    let (code, description) = call_err(
        &w.client,
        ORDERS_GET.subject,
        json!({"order_id": "o-nobody"}),
    )
    .await?;
    assert_eq!(code, 404);
    assert!(description.contains("o-nobody"), "{description}");
    for bad in [
        json!({"order_id": "has space"}),
        json!({"order_id": ""}),
        json!({}),
    ] {
        let (code, _) = call_err(&w.client, ORDERS_GET.subject, bad.clone()).await?;
        assert_eq!(code, 400, "{bad}");
    }

    replenish(&w.js, "sku-get", 4).await?;
    place(
        &w.js,
        order(
            "o-get",
            &[("sku-get", 2, 300), ("sku-other", 0, 1)],
            "tok_visa",
        ),
    )
    .await?;
    let rejected = wait_settled(&w.client, "o-get", SETTLE).await?;
    assert_eq!(rejected.status, OrderStatus::Rejected);
    assert!(!rejected.problems.is_empty());

    place(&w.js, order("o-get2", &[("sku-get", 2, 300)], "tok_visa")).await?;
    let view = wait_for_status(&w.client, "o-get2", OrderStatus::Confirmed, SETTLE).await?;
    assert_eq!(view.order_id, "o-get2");
    assert_eq!(view.total, 600);
    assert_eq!(view.currency, "EUR");
    assert_eq!(
        serde_json::to_value(&view.lines)?,
        json!([{"sku": "sku-get", "quantity": 2, "unit_price": 300}])
    );
    for (field, text) in [
        ("placed_at", &view.placed_at),
        ("settled_at", &view.settled_at),
    ] {
        let text = text.as_deref().unwrap_or_default();
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
            .map_err(|e| anyhow::anyhow!("{field} `{text}`: {e}"))?;
    }
    assert!(view.payment_id.is_some(), "{view:?}");
    assert!(view.reason.is_none(), "{view:?}");
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn cancelling_an_order_through_the_api_cancels_it_for_the_customer() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    let (code, _) = call_err(
        &w.client,
        ORDERS_CANCEL.subject,
        json!({"order_id": "o-ghost"}),
    )
    .await?;
    assert_eq!(code, 404);
    let (code, _) = call_err(
        &w.client,
        ORDERS_CANCEL.subject,
        json!({"order_id": "no/such"}),
    )
    .await?;
    assert_eq!(code, 400);

    replenish(&w.js, "sku-cancel", 3).await?;
    place(
        &w.js,
        order("o-cancel", &[("sku-cancel", 2, 450)], "tok_visa"),
    )
    .await?;
    wait_for_status(&w.client, "o-cancel", OrderStatus::Confirmed, SETTLE).await?;
    let reply = call_ok(
        &w.client,
        ORDERS_CANCEL.subject,
        json!({"order_id": "o-cancel", "reason": "changed my mind"}),
    )
    .await?;
    assert_eq!(reply["order_id"], "o-cancel");
    assert_eq!(reply["cancellation"], "requested");
    let view = wait_for_status(&w.client, "o-cancel", OrderStatus::Cancelled, SETTLE).await?;
    assert_eq!(view.reason, Some(CancelReason::CustomerRequest));
    wait_for_stock(&w.client, "sku-cancel", 3, 0, SETTLE).await?;
    let pay = eventually(SETTLE, "the refund", || async {
        let p = shop_harness::scenario::payment(&w.client, "o-cancel")
            .await
            .ok()??;
        (p.status == PaymentStatus::Refunded).then_some(p)
    })
    .await?;
    assert_eq!(pay.refunded, 900);
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn listing_orders_shows_the_most_recent_first_and_filters_by_status() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    // Until checkout holds every partition the list is 503 (ask again), then empty.
    let empty = eventually(SETTLE, "a list over every partition", || async {
        match call(&w.client, ORDERS_LIST.subject, json!({})).await.ok()? {
            Ok(list) => Some(list),
            Err((code, _)) => {
                assert_eq!(code, 503, "only 'ask again' while partitions move in");
                None
            }
        }
    })
    .await?;
    assert_eq!(empty, json!([]));

    replenish(&w.js, "sku-list", 10).await?;
    wait_for_stock(&w.client, "sku-list", 10, 0, SETTLE).await?;
    // One at a time, so each is placed strictly after the one before.
    place(
        &w.js,
        order("o-list-1", &[("sku-list", 1, 100)], "tok_visa"),
    )
    .await?;
    wait_settled(&w.client, "o-list-1", SETTLE).await?;
    place(&w.js, order("o-list-2", &[("sku-list", 1, 100)], "")).await?;
    wait_settled(&w.client, "o-list-2", SETTLE).await?;
    place(
        &w.js,
        order("o-list-3", &[("sku-list", 1, 100)], "tok_visa"),
    )
    .await?;
    wait_settled(&w.client, "o-list-3", SETTLE).await?;

    let ids = |list: &Value| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o["order_id"].as_str().map(str::to_owned))
            .collect()
    };
    let all = call_ok(&w.client, ORDERS_LIST.subject, json!({})).await?;
    assert_eq!(ids(&all), ["o-list-3", "o-list-2", "o-list-1"]);
    let confirmed = call_ok(
        &w.client,
        ORDERS_LIST.subject,
        json!({"status": "confirmed"}),
    )
    .await?;
    assert_eq!(ids(&confirmed), ["o-list-3", "o-list-1"]);
    let rejected = call_ok(
        &w.client,
        ORDERS_LIST.subject,
        json!({"status": "rejected"}),
    )
    .await?;
    assert_eq!(ids(&rejected), ["o-list-2"]);
    let newest = call_ok(&w.client, ORDERS_LIST.subject, json!({"limit": 1})).await?;
    assert_eq!(ids(&newest), ["o-list-3"]);
    let (code, _) = call_err(&w.client, ORDERS_LIST.subject, json!({"status": "shipped"})).await?;
    assert_eq!(code, 400, "an unknown status is a bad request");
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn stock_can_be_read_listed_and_replenished_through_the_api() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    let (code, description) =
        call_err(&w.client, STOCK_GET.subject, json!({"sku": "sku-none"})).await?;
    assert_eq!(code, 404);
    assert!(description.contains("sku-none"), "{description}");
    let (code, _) = call_err(&w.client, STOCK_GET.subject, json!({"sku": "bad sku"})).await?;
    assert_eq!(code, 400);
    assert_eq!(
        call_ok(&w.client, STOCK_LIST.subject, json!({})).await?,
        json!([])
    );

    for (body, expected) in [
        (json!({"sku": "sku-r", "quantity": 0}), vec!["quantity"]),
        (json!({"sku": "sku-r", "quantity": -3}), vec!["quantity"]),
        (
            json!({"sku": "sku-r", "quantity": 1_000_001}),
            vec!["quantity"],
        ),
        (json!({"sku": "bad sku", "quantity": 1}), vec!["sku"]),
        (json!({"sku": "", "quantity": 0}), vec!["sku", "quantity"]),
    ] {
        let (code, description) =
            call_err(&w.client, STOCK_REPLENISH.subject, body.clone()).await?;
        assert_eq!(code, 400, "{body}");
        for field in expected {
            assert!(
                description.contains(&format!("{field}:")),
                "{body}: {description}"
            );
        }
    }
    let (code, _) = call_raw(&w.client, STOCK_REPLENISH.subject, b"[1, 2")
        .await?
        .expect_err("bad JSON is refused");
    assert_eq!(code, 400);

    let reply = call_ok(
        &w.client,
        STOCK_REPLENISH.subject,
        json!({"sku": "sku-r", "quantity": 7}),
    )
    .await?;
    assert_eq!(reply["sku"], "sku-r");
    assert_eq!(reply["quantity"], 7);
    wait_for_stock(&w.client, "sku-r", 7, 0, SETTLE).await?;
    call_ok(
        &w.client,
        STOCK_REPLENISH.subject,
        json!({"sku": "sku-r", "quantity": 5}),
    )
    .await?;
    wait_for_stock(&w.client, "sku-r", 12, 0, SETTLE).await?;
    call_ok(
        &w.client,
        STOCK_REPLENISH.subject,
        json!({"sku": "sku-a", "quantity": 1}),
    )
    .await?;
    wait_for_stock(&w.client, "sku-a", 1, 0, SETTLE).await?;

    let one = call_ok(&w.client, STOCK_GET.subject, json!({"sku": "sku-r"})).await?;
    assert_eq!(
        one,
        json!({"sku": "sku-r", "on_hand": 12, "reserved": 0, "available": 12})
    );
    let list = call_ok(&w.client, STOCK_LIST.subject, json!({})).await?;
    let skus: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["sku"].as_str())
        .collect();
    assert_eq!(skus, ["sku-a", "sku-r"], "in sku order: {list}");
    w.shop.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_payment_shows_captured_amounts_in_minor_units() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    let (code, description) = call_err(
        &w.client,
        PAYMENTS_GET.subject,
        json!({"order_id": "o-unpaid"}),
    )
    .await?;
    assert_eq!(code, 404);
    assert!(description.contains("o-unpaid"), "{description}");
    let (code, _) = call_err(
        &w.client,
        PAYMENTS_GET.subject,
        json!({"order_id": "o unpaid"}),
    )
    .await?;
    assert_eq!(code, 400);
    assert_eq!(
        call_ok(&w.client, GATEWAY_LEDGER.subject, json!({})).await?,
        json!([])
    );

    replenish(&w.js, "sku-pay", 5).await?;
    place(
        &w.js,
        order("o-pay", &[("sku-pay", 3, 1999)], "tok_mastercard"),
    )
    .await?;
    wait_for_status(&w.client, "o-pay", OrderStatus::Confirmed, SETTLE).await?;
    let pay = eventually(SETTLE, "the capture", || async {
        let p = shop_harness::scenario::payment(&w.client, "o-pay")
            .await
            .ok()??;
        (p.status == PaymentStatus::Captured).then_some(p)
    })
    .await?;
    assert_eq!(pay.order_id, "o-pay");
    assert_eq!(pay.captured, 5997);
    assert_eq!(pay.refunded, 0);
    assert_eq!(pay.currency.as_deref(), Some("EUR"));
    assert!(pay.payment_id.as_deref().is_some(), "{pay:?}");

    let ledger = call_ok(&w.client, GATEWAY_LEDGER.subject, json!({})).await?;
    let entries = ledger.as_array().expect("ledger entries");
    assert_eq!(entries.len(), 1, "{ledger}");
    assert_eq!(entries[0]["order_id"], "o-pay");
    assert_eq!(entries[0]["amount"], 5997);
    assert_eq!(entries[0]["status"]["status"], "captured", "{ledger}");

    // Asking does not change anything: the order is charged once.
    let _ = call(
        &w.client,
        PAYMENTS_GET.subject,
        json!({"order_id": "o-pay"}),
    )
    .await?;
    tokio::time::timeout(Duration::from_secs(5), w.shop.shutdown()).await??;
    Ok(())
}

#[tokio::test]
async fn endpoints_without_fields_refuse_a_body_that_is_not_a_json_object() -> anyhow::Result<()> {
    let w = world(ShopConfig::in_process()).await?;
    for subject in [STOCK_LIST.subject, GATEWAY_LEDGER.subject] {
        // Not an object, or an object with a field these endpoints do not take.
        for body in [
            b"{not json".as_slice(),
            b"[1,2,3]",
            b"42",
            br#"{"sku":"sku-1"}"#,
        ] {
            let body: &'static [u8] = body;
            match call_raw(&w.client, subject, body).await? {
                Err((code, _)) => assert_eq!(code, 400, "{subject} with {body:?}"),
                Ok(reply) => panic!("{subject} answered {reply} to {body:?}"),
            }
        }
        // An empty body, `null` and `{}` are the request with no fields.
        assert!(
            call_raw(&w.client, subject, b"null").await?.is_ok(),
            "{subject}"
        );
        assert!(
            call_raw(&w.client, subject, b"").await?.is_ok(),
            "{subject}"
        );
        assert!(
            call_raw(&w.client, subject, b"{}").await?.is_ok(),
            "{subject}"
        );
    }
    w.shop.shutdown().await?;
    Ok(())
}
