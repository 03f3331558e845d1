//! Each role's rights, computed from the contract's names (`shop-events`), never spelled here.
//!
//! A service may publish its own domain's events and its own dead letters, declare the
//! streams it starts with (create, update, info: never delete or purge), create, read and
//! ack only its own consumers (`<service>` and `<service>-pNN` on each stream it reads),
//! read the dead-letter stream for its dead-letter book, use its keys in the groups bucket
//! and its own state bucket, and serve its endpoints and the micro-service protocol.
//! Upstream systems publish only the events they own and call only their endpoints.
//! Everyone gets a private inbox. `docs/SECURITY.md` explains each choice.

use std::collections::BTreeSet;

use shop_events::api::{self, checkout, deadletters, inventory};
use shop_events::partition::{partition_consumer, state_bucket, GROUPS_BUCKET, PARTITIONS};
use shop_events::rights_names::{consumed_domains, group_keys, published_domain, upstream_kinds};
use shop_events::subjects::{self, stream_specs, DEADLETTER_STREAM, DEFAULT_EVENT_MAX_AGE};
use shop_events::EventKind;

use crate::protocol as p;
use crate::role::Role;

/// What one identity may do: nats-server `permissions` for one user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rights {
    /// Subjects it may publish on (requests included).
    pub publish: BTreeSet<String>,
    /// Subjects refused even though `publish` matches them.
    pub publish_deny: BTreeSet<String>,
    /// Subjects it may subscribe to.
    pub subscribe: BTreeSet<String>,
    /// Whether it may answer requests sent to it (the reply subject is the requester's inbox).
    pub allow_responses: bool,
}

impl Rights {
    fn publish(&mut self, subjects: impl IntoIterator<Item = String>) {
        self.publish.extend(subjects);
    }
    fn subscribe(&mut self, subjects: impl IntoIterator<Item = String>) {
        self.subscribe.extend(subjects);
    }
}

/// The rights of `role`.
pub fn rights(role: Role) -> Rights {
    let mut rights = Rights::default();
    // Every client receives its replies (request replies, PubAcks, pulled messages,
    // KV watch updates) on its own inbox and nowhere else.
    rights.subscribe([format!("{}.>", role.inbox_prefix())]);
    match role {
        Role::Checkout | Role::Inventory | Role::Payment => {
            service_rights(role.name(), &mut rights)
        }
        // An upstream system publishes the kinds the contract says it publishes (the same
        // list the services check each event's `source` against), and calls its endpoints.
        Role::Storefront => {
            rights.publish(upstream_kinds(role.name()).into_iter().map(published));
            rights.publish(checkout::ENDPOINTS.iter().map(|e| e.subject.to_owned()));
        }
        Role::Warehouse => {
            rights.publish(upstream_kinds(role.name()).into_iter().map(published));
            rights.publish([inventory::STOCK_REPLENISH.subject.to_owned()]);
        }
        Role::Operator => operator_rights(&mut rights),
        Role::Admin => {
            rights.publish([">".to_owned()]);
            rights.subscribe([">".to_owned()]);
        }
    }
    rights
}

/// `events.<domain>.<verb>.*`: what a producer publishes for every key of one kind (the
/// four-token form; the stream appends the partition token as it stores it).
fn published(kind: EventKind) -> String {
    subjects::event_subject(kind, "*")
}

/// Every stream the shop declares (the three event streams and the dead letters).
fn declared_streams() -> Vec<&'static str> {
    stream_specs(DEFAULT_EVENT_MAX_AGE)
        .iter()
        .map(|s| s.name)
        .collect()
}

/// The durable names `service` consumes under on each stream it reads: today's
/// `<service>`, and one per partition (`<service>-pNN`) once the service scales out.
pub fn consumer_names(service: &str) -> Vec<String> {
    std::iter::once(partition_consumer(service, None))
        .chain((0..PARTITIONS).map(|part| partition_consumer(service, Some(part))))
        .collect()
}

/// The endpoints `service` serves: its API and its dead-letter book.
fn served_endpoints(service: &str) -> Vec<String> {
    api::all_endpoints()
        .iter()
        .filter(|e| e.service == service)
        .map(|e| e.subject.to_owned())
        .chain(deadletters::endpoints(service).into_iter().map(|(_, s)| s))
        .collect()
}

fn service_rights(service: &str, rights: &mut Rights) {
    rights.allow_responses = true;
    if let Some(domain) = published_domain(service) {
        rights.publish([domain.wildcard()]);
    }
    rights.publish([subjects::deadletter_filter(service)]);
    // Creating a KV bucket first asks for the account's JetStream limits.
    rights.publish([p::account_info()]);
    // Each service declares the streams when it starts (crates/runtime/src/streams.rs):
    // create or update, and the info lookup before it. Never delete or purge.
    for stream in declared_streams() {
        rights.publish([
            p::stream_info(stream),
            p::stream_create(stream),
            p::stream_update(stream),
        ]);
    }
    // Its own durable consumers only: create (with or without the filter in the subject),
    // look up, pull, and acknowledge.
    for domain in consumed_domains(service) {
        let stream = domain.stream();
        for name in consumer_names(service) {
            rights.publish([
                p::consumer_create(stream, &name),
                p::consumer_create_filtered(stream, &name, ">"),
                p::consumer_info(stream, &name),
                p::consumer_next(stream, &name),
                p::acks(stream, &name),
            ]);
        }
    }
    // The dead-letter book reads the dead-letter stream through an ordered consumer the
    // server names, and gets single letters by sequence.
    rights.publish([
        p::consumer_create_ephemeral(DEADLETTER_STREAM),
        p::consumer_next(DEADLETTER_STREAM, "*"),
        p::consumer_info(DEADLETTER_STREAM, "*"),
        p::direct_get(DEADLETTER_STREAM),
        p::stream_msg_get(DEADLETTER_STREAM),
    ]);
    // Partitioned ownership: its own keys in the shared groups bucket, and its own
    // state bucket whole.
    kv_rights(GROUPS_BUCKET, &group_keys(service), rights);
    kv_rights(&state_bucket(service), ">", rights);
    // Its changelog's last cut and records are read from the stream leader: a direct get
    // may be answered by a replica that is behind (crates/runtime/src/changelog.rs, `last`).
    rights.publish([p::stream_msg_get(&p::kv_stream(&state_bucket(service)))]);
    // Micro-service protocol and its own endpoints.
    rights.subscribe(p::micro_service(service));
    rights.subscribe(served_endpoints(service));
    // Checkout's instances gather `checkout.orders.list` from each other.
    if service == checkout::ORDERS_LIST.service {
        rights.publish([checkout::ORDERS_LIST_GATHER.to_owned()]);
        rights.subscribe([checkout::ORDERS_LIST_GATHER.to_owned()]);
    }
}

/// Using the keys `keys` of KV bucket `bucket`: put and delete (a publish on the key's
/// subject), get (direct get by subject), watch (an ordered consumer filtered to them),
/// and looking the bucket up or creating it (the first member creates it).
fn kv_rights(bucket: &str, keys: &str, rights: &mut Rights) {
    let stream = p::kv_stream(bucket);
    let key_subjects = p::kv_subject(bucket, keys);
    rights.publish([
        key_subjects.clone(),
        p::stream_info(&stream),
        p::stream_create(&stream),
        p::direct_get_last(&stream, &key_subjects),
        // async-nats 0.51 creates watchers without a name, so without the filter in the
        // subject (docs/SECURITY.md: what that leaves open); clients that name them put
        // the filter in the subject and are held to these keys.
        p::consumer_create_ephemeral(&stream),
        p::consumer_create_filtered(&stream, "*", &key_subjects),
        p::flow_control(&stream),
        // A watcher is an ordered consumer: when it loses its server-side consumer (the
        // bucket's leader changed) async-nats deletes the old one before it creates the
        // next. Refused, that cleanup was an ERROR log and a counted denial in every
        // service at every election. Only the buckets' consumers, which are all such
        // watchers; the event streams' consumers stay admin's to delete.
        p::consumer_delete(&stream, "*"),
    ]);
}

fn operator_rights(rights: &mut Rights) {
    // Every endpoint, the dead-letter books included, and the micro-service protocol.
    rights.publish(api::all_endpoints().iter().map(|e| e.subject.to_owned()));
    for service in api::service::ALL {
        rights.publish(deadletters::endpoints(service).into_iter().map(|(_, s)| s));
    }
    rights.publish([
        p::micro_all(),
        p::account_info(),
        p::stream_names(),
        p::stream_list(),
    ]);
    // Reading every stream: info, consumer info, single messages, and consumers of its
    // own to read through (the nats CLI names its ordered consumers; async-nats leaves
    // the name to the server). A service's consumer names are carved out below, so its
    // consumers cannot be replaced, pulled from or deleted.
    for stream in declared_streams() {
        rights.publish([
            p::stream_info(stream),
            p::consumer_names(stream),
            p::consumer_list(stream),
            p::consumer_info(stream, "*"),
            p::direct_get(stream),
            p::direct_get_last(stream, ">"),
            p::stream_msg_get(stream),
            p::consumer_create_ephemeral(stream),
            p::consumer_create(stream, "*"),
            p::consumer_create_filtered(stream, "*", ">"),
            p::consumer_next(stream, "*"),
            p::flow_control(stream),
        ]);
    }
    // Creating a consumer under a service's name would replace its settings; pulling from
    // one would take its messages away for an ack wait.
    for service in api::service::ALL {
        for stream in declared_streams() {
            for name in consumer_names(service) {
                rights.publish_deny.extend([
                    p::consumer_create(stream, &name),
                    p::consumer_create_filtered(stream, &name, ">"),
                    p::consumer_next(stream, &name),
                ]);
            }
        }
    }
    // The group and state buckets, read-only (`nats kv get`, `nats kv info`).
    let buckets = std::iter::once(GROUPS_BUCKET.to_owned())
        .chain(api::service::ALL.iter().map(|s| state_bucket(s)));
    for bucket in buckets {
        let stream = p::kv_stream(&bucket);
        rights.publish([
            p::stream_info(&stream),
            p::direct_get_last(&stream, &p::kv_subject(&bucket, ">")),
        ]);
    }
}

#[cfg(test)]
mod tests {
    use shop_events::subjects::{ORDERS_STREAM, PAYMENTS_STREAM};

    use super::*;

    /// nats-server's subject matching: `*` one token, `>` one or more trailing tokens.
    pub(crate) fn matches(pattern: &str, subject: &str) -> bool {
        let mut pat = pattern.split('.');
        let mut sub = subject.split('.');
        loop {
            match (pat.next(), sub.next()) {
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(s)) if p == s => {}
                (None, None) => return true,
                _ => return false,
            }
        }
    }

    fn may_publish(role: Role, subject: &str) -> bool {
        let r = rights(role);
        r.publish.iter().any(|p| matches(p, subject))
            && !r.publish_deny.iter().any(|p| matches(p, subject))
    }

    fn may_subscribe(role: Role, subject: &str) -> bool {
        rights(role).subscribe.iter().any(|p| matches(p, subject))
    }

    #[test]
    fn the_matcher_follows_nats_wildcards() {
        assert!(matches("events.orders.>", "events.orders.placed.o-1"));
        assert!(matches(
            "events.orders.placed.*",
            "events.orders.placed.o-1"
        ));
        assert!(!matches(
            "events.orders.placed.*",
            "events.orders.placed.o-1.3"
        ));
        assert!(!matches("events.orders.>", "events.orders"));
    }

    #[test]
    fn only_checkout_gathers_its_list_from_its_instances() {
        let gather = checkout::ORDERS_LIST_GATHER;
        assert!(may_publish(Role::Checkout, gather));
        assert!(may_subscribe(Role::Checkout, gather));
        for role in [
            Role::Payment,
            Role::Inventory,
            Role::Storefront,
            Role::Operator,
        ] {
            assert!(
                !may_subscribe(role, gather),
                "{role:?} may not read the shares"
            );
        }
        for role in [Role::Payment, Role::Inventory, Role::Storefront] {
            assert!(
                !may_publish(role, gather),
                "{role:?} may not ask for the shares"
            );
        }
    }

    #[test]
    fn payment_publishes_only_payment_events_and_its_own_dead_letters() {
        assert!(may_publish(Role::Payment, "events.payments.captured.o-1"));
        assert!(may_publish(Role::Payment, "deadletter.payment.ORDERS"));
        assert!(!may_publish(Role::Payment, "events.orders.confirmed.o-1"));
        assert!(!may_publish(Role::Payment, "events.inventory.reserved.o-1"));
        assert!(!may_publish(Role::Payment, "deadletter.checkout.ORDERS"));
    }

    #[test]
    fn each_service_reads_only_its_own_consumers() {
        for role in [Role::Checkout, Role::Inventory, Role::Payment] {
            let me = role.name();
            assert!(may_publish(role, &p::consumer_next(ORDERS_STREAM, me)));
            assert!(may_publish(
                role,
                &p::consumer_next(ORDERS_STREAM, &format!("{me}-p15"))
            ));
            assert!(may_publish(
                role,
                &format!("$JS.ACK.{ORDERS_STREAM}.{me}-p03.1.2.3.4.5")
            ));
            for other in api::service::ALL.iter().filter(|s| **s != me) {
                assert!(!may_publish(role, &p::consumer_next(ORDERS_STREAM, other)));
                assert!(!may_publish(
                    role,
                    &p::consumer_create(ORDERS_STREAM, other)
                ));
                assert!(!may_publish(role, &p::acks(ORDERS_STREAM, other)));
            }
        }
        // Payment does not read PAYMENTS at all.
        assert!(!may_publish(
            Role::Payment,
            &p::consumer_create(PAYMENTS_STREAM, "payment")
        ));
    }

    #[test]
    fn nobody_but_admin_deletes_or_purges_a_stream_or_a_consumer() {
        for role in Role::ALL.into_iter().filter(|r| *r != Role::Admin) {
            for stream in declared_streams() {
                assert!(
                    !may_publish(role, &p::stream_delete(stream)),
                    "{role} {stream}"
                );
                assert!(
                    !may_publish(role, &p::stream_purge(stream)),
                    "{role} {stream}"
                );
                for service in api::service::ALL {
                    assert!(
                        !may_publish(role, &p::consumer_delete(stream, service)),
                        "{role}"
                    );
                }
            }
        }
        assert!(may_publish(Role::Admin, &p::stream_delete(ORDERS_STREAM)));
    }

    #[test]
    fn upstream_systems_publish_only_their_events_and_call_only_their_endpoints() {
        assert!(may_publish(Role::Storefront, "events.orders.placed.o-1"));
        assert!(may_publish(
            Role::Storefront,
            "events.orders.cancellation_requested.o-1"
        ));
        assert!(may_publish(
            Role::Storefront,
            checkout::ORDERS_PLACE.subject
        ));
        assert!(!may_publish(
            Role::Storefront,
            "events.payments.captured.o-1"
        ));
        assert!(!may_publish(
            Role::Storefront,
            "events.orders.confirmed.o-1"
        ));
        assert!(!may_publish(
            Role::Storefront,
            inventory::STOCK_REPLENISH.subject
        ));
        assert!(may_publish(
            Role::Warehouse,
            "events.inventory.replenished.sku-1"
        ));
        assert!(may_publish(
            Role::Warehouse,
            inventory::STOCK_REPLENISH.subject
        ));
        assert!(!may_publish(
            Role::Warehouse,
            "events.inventory.reserved.o-1"
        ));
        assert!(!may_publish(
            Role::Warehouse,
            checkout::ORDERS_PLACE.subject
        ));
    }

    #[test]
    fn every_inbox_is_private() {
        for role in Role::ALL.into_iter().filter(|r| *r != Role::Admin) {
            for other in Role::ALL.into_iter().filter(|o| *o != role) {
                let theirs = format!("{}.abc", other.inbox_prefix());
                assert!(
                    !may_subscribe(role, &theirs),
                    "{role} reads {other}'s inbox"
                );
            }
            assert!(may_subscribe(role, &format!("{}.abc", role.inbox_prefix())));
            assert!(!may_subscribe(role, "_INBOX.abc"));
        }
    }

    #[test]
    fn the_operator_reads_but_cannot_publish_events_or_take_a_service_s_messages() {
        assert!(may_publish(Role::Operator, &p::stream_info(ORDERS_STREAM)));
        assert!(may_publish(
            Role::Operator,
            &p::consumer_info(ORDERS_STREAM, "payment")
        ));
        assert!(may_publish(Role::Operator, "$SRV.STATS.checkout"));
        assert!(may_publish(
            Role::Operator,
            &deadletters::replay_subject("payment")
        ));
        assert!(!may_publish(Role::Operator, "events.orders.placed.o-1"));
        assert!(!may_publish(
            Role::Operator,
            &p::consumer_next(ORDERS_STREAM, "payment")
        ));
        assert!(!may_publish(
            Role::Operator,
            &p::consumer_next(ORDERS_STREAM, "payment-p04")
        ));
        assert!(!may_publish(
            Role::Operator,
            &p::consumer_create(ORDERS_STREAM, "payment")
        ));
        assert!(!may_publish(
            Role::Operator,
            &p::consumer_create_filtered(ORDERS_STREAM, "payment-p02", "events.orders.>")
        ));
        assert!(may_publish(
            Role::Operator,
            &p::consumer_create(ORDERS_STREAM, "abc123_1")
        ));
    }

    #[test]
    fn services_use_their_own_group_keys_and_state_bucket() {
        let groups = p::kv_stream(GROUPS_BUCKET);
        assert!(may_publish(
            Role::Payment,
            &p::kv_subject(GROUPS_BUCKET, "payment.leases.3")
        ));
        assert!(!may_publish(
            Role::Payment,
            &p::kv_subject(GROUPS_BUCKET, "checkout.leases.3")
        ));
        assert!(may_publish(Role::Payment, &p::stream_create(&groups)));
        // A watcher recreated after a leader change deletes its old consumer.
        assert!(may_publish(
            Role::Payment,
            &p::consumer_delete(&groups, "Xu52GCXS")
        ));
        assert!(!may_publish(
            Role::Storefront,
            &p::consumer_delete(&groups, "Xu52GCXS")
        ));
        let state = state_bucket("payment");
        assert!(may_publish(Role::Payment, &p::kv_subject(&state, "3.o-1")));
        assert!(!may_publish(
            Role::Payment,
            &p::kv_subject(&state_bucket("checkout"), "3.o-1")
        ));
        assert!(!may_publish(
            Role::Payment,
            &p::stream_delete(&p::kv_stream(&state))
        ));
    }

    #[test]
    fn services_serve_their_endpoints_and_answer_micro_requests() {
        let r = rights(Role::Inventory);
        assert!(r.allow_responses);
        assert!(may_subscribe(Role::Inventory, inventory::STOCK_GET.subject));
        assert!(may_subscribe(
            Role::Inventory,
            &deadletters::list_subject("inventory")
        ));
        assert!(may_subscribe(Role::Inventory, "$SRV.PING"));
        assert!(may_subscribe(Role::Inventory, "$SRV.STATS.inventory.abc"));
        assert!(!may_subscribe(
            Role::Inventory,
            checkout::ORDERS_GET.subject
        ));
        assert!(!rights(Role::Storefront).allow_responses);
    }
}
