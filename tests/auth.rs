//! Least privilege, on a real nats-server running the generated authorization: each role's
//! allowed actions work, the server refuses each forbidden one (a forged `PaymentCaptured`
//! from storefront, a stream delete from payment, another role's inbox, no credentials),
//! a service that lacks a right says so in STATS, and TLS with certificates made here.
//!
//! Refusals are read from the server's permissions violations as typed
//! [`PermissionDenial`]s, never from message text; nothing waits on a fixed sleep.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectErrorKind, Event};
use futures::TryStreamExt;
use serde_json::json;
use shop_events::api::{checkout, deadletters, inventory};
use shop_events::partition::partition_consumer;
use shop_events::subjects::{
    event_subject, DEADLETTER_STREAM, EVENT_STREAMS, ORDERS_STREAM, PAYMENTS_STREAM,
};
use shop_events::EventKind;
use shop_harness::scenario::{order, place, replenish, wait_for_status};
use shop_harness::{
    connect, declare_streams, eventually, NatsServer, Role, ServerOptions, Service, ShopConfig,
};
use shop_runtime::connect::{DeniedOperation, NatsConfig, PermissionDenial};
use tokio::sync::mpsc;

use common::{call_ok, counters, world, SETTLE};

/// How long a refusal may take to come back from the server.
const REFUSAL: Duration = Duration::from_secs(5);

/// A connection that reports the server's permission refusals on a channel.
struct Observed {
    client: Client,
    denials: mpsc::UnboundedReceiver<PermissionDenial>,
}

impl Observed {
    async fn connect(config: NatsConfig) -> anyhow::Result<Observed> {
        let (tx, denials) = mpsc::unbounded_channel();
        let client = config
            .options()?
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let Event::ServerError(error) = event {
                        if let Some(denial) = PermissionDenial::from_server_error(&error) {
                            let _ = tx.send(denial);
                        }
                    }
                }
            })
            .connect(config.url.as_str())
            .await?;
        Ok(Observed { client, denials })
    }

    /// A JetStream context that gives up quickly: a refused request is never answered.
    fn js(&self) -> jetstream::Context {
        let mut js = jetstream::new(self.client.clone());
        js.set_timeout(Duration::from_secs(1));
        js
    }

    /// Waits until the server reports refusing `operation` on `subject`.
    async fn refused(
        &mut self,
        operation: DeniedOperation,
        subject: &str,
    ) -> anyhow::Result<PermissionDenial> {
        let deadline = tokio::time::Instant::now() + REFUSAL;
        loop {
            let next = tokio::time::timeout_at(deadline, self.denials.recv())
                .await
                .with_context(|| {
                    format!("no refusal of {operation:?} {subject} within {REFUSAL:?}")
                })?
                .context("connection closed")?;
            if next.operation == operation && next.subject == subject {
                return Ok(next);
            }
        }
    }

    /// Publishes on `subject` (core NATS, flushed) and waits for its refusal.
    async fn publish_refused(&mut self, subject: &str) -> anyhow::Result<()> {
        self.client.publish(subject.to_owned(), "{}".into()).await?;
        self.client.flush().await?;
        self.refused(DeniedOperation::Publish, subject).await?;
        Ok(())
    }

    /// Whether any refusal has arrived so far (for actions that must be allowed).
    fn any_refusal(&mut self) -> Option<PermissionDenial> {
        self.denials.try_recv().ok()
    }
}

fn forged_payment_captured() -> serde_json::Value {
    json!({
        "specversion": "1.0", "id": "forged-1", "source": "payment",
        "type": "shop.PaymentCaptured.v1", "subject": "o-forged",
        "time": "2026-12-02T10:00:00Z", "datacontenttype": "application/json",
        "data": {"order_id": "o-forged", "payment_id": "pay-1", "amount": 1000, "currency": "EUR"}
    })
}

#[tokio::test]
async fn a_client_without_credentials_or_with_an_unknown_key_is_refused() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let anonymous = async_nats::ConnectOptions::new()
        .connect(server.url())
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(anonymous, Some(ConnectErrorKind::AuthorizationViolation));

    // A well-formed key the server was never told about.
    let dir = tempfile::tempdir()?;
    shop_auth::init(dir.path(), false)?;
    let unknown = NatsConfig::new(server.url())
        .with_nkey(shop_auth::seed_path(dir.path(), Role::Admin))
        .options()?
        .connect(server.url())
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(unknown, Some(ConnectErrorKind::AuthorizationViolation));

    // And the shop's own connect gives up at once instead of retrying for ever.
    let (_trigger, shutdown) = shop_runtime::shutdown::Shutdown::new();
    let refused = tokio::time::timeout(
        REFUSAL,
        shop_runtime::connect::connect(&NatsConfig::new(server.url()), "anonymous", &shutdown),
    )
    .await
    .context("connect kept retrying refused credentials")?;
    assert!(matches!(
        refused,
        Err(shop_runtime::RuntimeError::Connect { ref source, .. })
            if source.kind() == ConnectErrorKind::AuthorizationViolation
    ));
    Ok(())
}

#[tokio::test]
async fn storefront_cannot_forge_a_payment_captured() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let admin = jetstream::new(connect(&server.url()).await?);
    declare_streams(&admin).await?;
    let mut storefront = Observed::connect(server.nats_config(Role::Storefront)).await?;

    let subject = event_subject(EventKind::PaymentCaptured, "o-forged");
    let body = serde_json::to_vec(&forged_payment_captured())?;
    let sent = storefront.js().publish(subject.clone(), body.into()).await;
    let acked = match sent {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    };
    assert!(!acked, "a forged PaymentCaptured was stored");
    storefront
        .refused(DeniedOperation::Publish, &subject)
        .await?;
    let payments = admin.get_stream(PAYMENTS_STREAM).await?.get_info().await?;
    assert_eq!(payments.state.messages, 0);
    Ok(())
}

#[tokio::test]
async fn payment_cannot_delete_or_purge_a_stream() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let admin = jetstream::new(connect(&server.url()).await?);
    declare_streams(&admin).await?;
    let mut payment = Observed::connect(server.nats_config(Role::Payment)).await?;

    let deleted = payment.js().delete_stream(ORDERS_STREAM).await;
    assert!(deleted.is_err());
    payment
        .refused(
            DeniedOperation::Publish,
            &format!("$JS.API.STREAM.DELETE.{ORDERS_STREAM}"),
        )
        .await?;
    let purge = format!("$JS.API.STREAM.PURGE.{ORDERS_STREAM}");
    payment.publish_refused(&purge).await?;
    for stream in EVENT_STREAMS.iter().chain([&DEADLETTER_STREAM]) {
        admin.get_stream(*stream).await?;
    }
    // Only admin may.
    admin.delete_stream(ORDERS_STREAM).await?;
    Ok(())
}

#[tokio::test]
async fn nobody_reads_another_role_s_inbox() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    for (role, other) in [
        (Role::Storefront, Role::Operator),
        (Role::Payment, Role::Checkout),
        (Role::Operator, Role::Warehouse),
    ] {
        let mut observed = Observed::connect(server.nats_config(role)).await?;
        let theirs = format!("{}.>", other.inbox_prefix());
        let _subscription = observed.client.subscribe(theirs.clone()).await?;
        observed.client.flush().await?;
        observed
            .refused(DeniedOperation::Subscribe, &theirs)
            .await
            .with_context(|| format!("{role} reading {other}'s inbox"))?;
        // The default, shared inbox is nobody's either.
        let shared = "_INBOX.>".to_owned();
        let _shared = observed.client.subscribe(shared.clone()).await?;
        observed.client.flush().await?;
        observed
            .refused(DeniedOperation::Subscribe, &shared)
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn each_forbidden_action_is_refused_by_the_server() -> anyhow::Result<()> {
    let server = NatsServer::start().await?;
    let forbidden: Vec<(Role, String)> = vec![
        // Upstreams publish only their own kinds.
        (
            Role::Storefront,
            event_subject(EventKind::OrderConfirmed, "o-1"),
        ),
        (
            Role::Storefront,
            inventory::STOCK_REPLENISH.subject.to_owned(),
        ),
        (
            Role::Warehouse,
            event_subject(EventKind::StockReserved, "o-1"),
        ),
        (Role::Warehouse, checkout::ORDERS_PLACE.subject.to_owned()),
        // Services publish only their own domain and dead letters.
        (
            Role::Checkout,
            event_subject(EventKind::PaymentCaptured, "o-1"),
        ),
        (
            Role::Inventory,
            event_subject(EventKind::OrderConfirmed, "o-1"),
        ),
        (
            Role::Payment,
            event_subject(EventKind::StockReserved, "o-1"),
        ),
        (Role::Payment, "deadletter.checkout.ORDERS".to_owned()),
        // Nobody creates, pulls from or acks another's consumer.
        (
            Role::Inventory,
            format!("$JS.API.CONSUMER.CREATE.{ORDERS_STREAM}.payment"),
        ),
        (
            Role::Checkout,
            format!(
                "$JS.API.CONSUMER.MSG.NEXT.{ORDERS_STREAM}.{}",
                partition_consumer("payment", Some(3))
            ),
        ),
        (
            Role::Payment,
            format!("$JS.ACK.{ORDERS_STREAM}.checkout.1.1.1.1.1"),
        ),
        (
            Role::Operator,
            format!("$JS.API.CONSUMER.MSG.NEXT.{ORDERS_STREAM}.payment"),
        ),
        (
            Role::Operator,
            format!("$JS.API.CONSUMER.DELETE.{ORDERS_STREAM}.payment"),
        ),
        // The operator reads and calls endpoints; it never publishes an event.
        (Role::Operator, event_subject(EventKind::OrderPlaced, "o-1")),
        (
            Role::Storefront,
            format!("$JS.API.STREAM.DELETE.{ORDERS_STREAM}"),
        ),
        (
            Role::Checkout,
            format!("$JS.API.STREAM.PURGE.{PAYMENTS_STREAM}"),
        ),
    ];
    for role in Role::ALL.into_iter().filter(|r| *r != Role::Admin) {
        let mut observed = Observed::connect(server.nats_config(role)).await?;
        for (_, subject) in forbidden.iter().filter(|(r, _)| *r == role) {
            observed
                .publish_refused(subject)
                .await
                .with_context(|| format!("{role} publishing on {subject}"))?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn each_role_s_allowed_actions_work_while_the_services_run_as_themselves(
) -> anyhow::Result<()> {
    // The world runs checkout, inventory and payment each with its own key.
    let w = world(ShopConfig::in_process()).await?;
    let url = w.server.url();

    let mut warehouse = Observed::connect(w.server.nats_config(Role::Warehouse)).await?;
    replenish(&warehouse.js(), "sku-auth", 10).await?;
    call_ok(
        &warehouse.client,
        inventory::STOCK_REPLENISH.subject,
        json!({"sku": "sku-auth", "quantity": 5}),
    )
    .await?;

    let mut storefront = Observed::connect(w.server.nats_config(Role::Storefront)).await?;
    place(
        &storefront.js(),
        order("o-auth-1", &[("sku-auth", 2, 1250)], "tok_visa"),
    )
    .await?;
    call_ok(
        &storefront.client,
        checkout::ORDERS_PLACE.subject,
        json!({"order_id": "o-auth-2", "customer_id": "c-1", "currency": "EUR",
               "lines": [{"sku": "sku-auth", "quantity": 1, "unit_price": 1250}],
               "total": 1250, "payment_token": "tok_visa"}),
    )
    .await?;
    // Every service did its part under its own identity.
    for id in ["o-auth-1", "o-auth-2"] {
        let view = wait_for_status(
            &storefront.client,
            id,
            shop_events::api::checkout::OrderStatus::Confirmed,
            SETTLE,
        )
        .await?;
        assert_eq!(view.order_id, id);
    }

    let mut operator = Observed::connect(w.server.nats_config(Role::Operator)).await?;
    let js = operator.js();
    let orders = js.get_stream(ORDERS_STREAM).await?.get_info().await?;
    assert!(orders.state.messages >= 2);
    let orders_stream = js.get_stream(ORDERS_STREAM).await?;
    let names: Vec<String> = orders_stream.consumer_names().try_collect().await?;
    let checkouts = names
        .iter()
        .find(|n| n.starts_with("checkout"))
        .context("checkout's consumer")?;
    assert_eq!(
        &orders_stream.consumer_info(checkouts).await?.name,
        checkouts
    );
    let trail = shop_ops::reader::events_about(&js, "o-auth-1").await?;
    assert!(trail.len() >= 4, "{trail:?}");
    call_ok(
        &operator.client,
        &deadletters::list_subject("payment"),
        json!({}),
    )
    .await?;
    for service in [Service::Checkout, Service::Inventory, Service::Payment] {
        let stats = counters(&operator.client, service).await?;
        assert_eq!(stats["permission_denials"], 0, "{service}: {stats}");
    }

    for (role, observed) in [
        (Role::Warehouse, &mut warehouse),
        (Role::Storefront, &mut storefront),
        (Role::Operator, &mut operator),
    ] {
        assert_eq!(observed.any_refusal(), None, "{role} was refused something");
    }

    // Admin declares and deletes what it likes.
    let admin = jetstream::new(connect(&url).await?);
    admin
        .create_stream(stream::Config {
            name: "AUTH_SCRATCH".into(),
            subjects: vec!["auth.scratch.>".into()],
            ..Default::default()
        })
        .await?;
    admin.delete_stream("AUTH_SCRATCH").await?;
    Ok(())
}

#[tokio::test]
async fn a_service_refused_a_right_logs_it_counts_it_in_stats_and_carries_on() -> anyhow::Result<()>
{
    let w = world(ShopConfig::in_process()).await?;
    // A body no service can read: each parks its copy as a dead letter of ORDERS.
    let subject = event_subject(EventKind::OrderPlaced, "o-unreadable");
    w.js.publish(subject, "[]".into()).await?.await?;
    let operator = shop_harness::connect_as(&w.server.url(), Role::Operator).await?;
    let letter = eventually(SETTLE, "payment's dead letter", || async {
        let listed = call_ok(&operator, &deadletters::list_subject("payment"), json!({}))
            .await
            .ok()?;
        listed.as_array()?.first()?["seq"].as_u64()
    })
    .await?;

    // Replaying republishes an ORDERS event, which payment may not publish.
    let replayed = shop_harness::scenario::request(
        &operator,
        &deadletters::replay_subject("payment"),
        &json!({ "seq": letter }),
    )
    .await;
    assert!(
        !matches!(replayed, Ok(Ok(_))),
        "payment published an ORDERS event"
    );
    let stats = eventually(SETTLE, "payment to count the refusal", || async {
        let stats = counters(&operator, Service::Payment).await.ok()?;
        (stats["permission_denials"].as_u64()? >= 1).then_some(stats)
    })
    .await?;
    let last = stats["last_permission_denial"].as_str().unwrap_or_default();
    assert!(
        last.ends_with("o-unreadable") || last.contains(".o-unreadable."),
        "{stats}"
    );

    // Payment carries on: a real order still goes through.
    replenish(&w.js, "sku-after", 5).await?;
    place(
        &w.js,
        order("o-after", &[("sku-after", 1, 500)], "tok_visa"),
    )
    .await?;
    wait_for_status(
        &w.client,
        "o-after",
        shop_events::api::checkout::OrderStatus::Confirmed,
        SETTLE,
    )
    .await?;
    Ok(())
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made with the
/// `openssl` command line.
struct Certificates {
    dir: tempfile::TempDir,
}

impl Certificates {
    fn make() -> anyhow::Result<Certificates> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let openssl = |args: &[&str]| -> anyhow::Result<()> {
            let status = std::process::Command::new("openssl")
                .args(args)
                .current_dir(d)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .context("running openssl (needed to make the test certificates)")?;
            anyhow::ensure!(status.success(), "openssl {args:?} failed");
            Ok(())
        };
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )?;
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=shop test CA",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ])?;
        for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
            let (key, csr, cert) = (
                format!("{name}-key.pem"),
                format!("{name}.csr"),
                format!("{name}.pem"),
            );
            openssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN=shop {name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ])?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                ext,
                "-out",
                &cert,
            ])?;
        }
        Ok(Certificates { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server's `tls` block, requiring client certificates signed by the CA.
    fn server_block(&self) -> String {
        let quoted = |p: &Path| format!("{:?}", p.display().to_string());
        format!(
            "tls {{\n  cert_file: {}\n  key_file: {}\n  ca_file: {}\n  verify: true\n  timeout: 2\n}}\n",
            quoted(&self.path("server.pem")),
            quoted(&self.path("server-key.pem")),
            quoted(&self.path("ca.pem")),
        )
    }
}

#[tokio::test]
async fn tls_with_certificates_made_at_test_time_admits_only_a_trusted_client() -> anyhow::Result<()>
{
    let certs = Certificates::make()?;
    let server =
        NatsServer::start_with(ServerOptions::default().extra_config(certs.server_block())).await?;
    let operator = server.nats_config(Role::Operator);

    let trusted = operator
        .clone()
        .with_tls_ca(certs.path("ca.pem"))
        .with_client_certificate(certs.path("client.pem"), certs.path("client-key.pem"));
    let admin = server
        .nats_config(Role::Admin)
        .with_tls_ca(certs.path("ca.pem"))
        .with_client_certificate(certs.path("client.pem"), certs.path("client-key.pem"));
    declare_streams(&jetstream::new(shop_harness::connect_with(&admin).await?)).await?;
    let js = jetstream::new(shop_harness::connect_with(&trusted).await?);
    js.get_stream(ORDERS_STREAM).await?;

    // Without a client certificate the server ends the handshake.
    let no_certificate = operator.clone().with_tls_ca(certs.path("ca.pem"));
    let kind = no_certificate
        .options()?
        .connect(server.url())
        .await
        .err()
        .map(|e| e.kind());
    assert!(
        matches!(kind, Some(ConnectErrorKind::Tls | ConnectErrorKind::Io)),
        "a client without a certificate: {kind:?}"
    );

    // Without trusting the CA the client refuses the server.
    let untrusting =
        operator.with_client_certificate(certs.path("client.pem"), certs.path("client-key.pem"));
    let kind = untrusting
        .options()?
        .connect(server.url())
        .await
        .err()
        .map(|e| e.kind());
    // async-nats reports rustls's refusal of the certificate as an I/O error of the handshake.
    assert!(
        matches!(kind, Some(ConnectErrorKind::Tls | ConnectErrorKind::Io)),
        "a client that does not trust the server's CA: {kind:?}"
    );
    Ok(())
}
