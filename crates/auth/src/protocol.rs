//! NATS's own subjects (JetStream API, KV, micro-service discovery) that rights are made of.
//!
//! These are the server's and the clients' protocol names, not the shop's: every shop
//! name that goes into them (streams, consumers, buckets, keys) comes from `shop-events`.

/// `$JS.API.<rest>`: a JetStream API request.
fn api(rest: &str) -> String {
    format!("$JS.API.{rest}")
}

pub fn stream_info(stream: &str) -> String {
    api(&format!("STREAM.INFO.{stream}"))
}
pub fn stream_create(stream: &str) -> String {
    api(&format!("STREAM.CREATE.{stream}"))
}
pub fn stream_update(stream: &str) -> String {
    api(&format!("STREAM.UPDATE.{stream}"))
}
pub fn stream_delete(stream: &str) -> String {
    api(&format!("STREAM.DELETE.{stream}"))
}
pub fn stream_purge(stream: &str) -> String {
    api(&format!("STREAM.PURGE.{stream}"))
}
/// Get one message by sequence or last-by-subject, through the stream leader.
pub fn stream_msg_get(stream: &str) -> String {
    api(&format!("STREAM.MSG.GET.{stream}"))
}
pub fn stream_names() -> String {
    api("STREAM.NAMES")
}
pub fn stream_list() -> String {
    api("STREAM.LIST")
}
pub fn account_info() -> String {
    api("INFO")
}

/// Direct get with the request in the body (by sequence, or next-for-subject).
pub fn direct_get(stream: &str) -> String {
    api(&format!("DIRECT.GET.{stream}"))
}
/// Direct get of the last message on `subject`, the subject in the API subject (how KV gets read).
pub fn direct_get_last(stream: &str, subject: &str) -> String {
    api(&format!("DIRECT.GET.{stream}.{subject}"))
}

/// Creating a consumer named in the subject (any filter in the body).
pub fn consumer_create(stream: &str, consumer: &str) -> String {
    api(&format!("CONSUMER.CREATE.{stream}.{consumer}"))
}
/// Creating a consumer named in the subject with its one filter in the subject too.
pub fn consumer_create_filtered(stream: &str, consumer: &str, filter: &str) -> String {
    api(&format!("CONSUMER.CREATE.{stream}.{consumer}.{filter}"))
}
/// Creating an ephemeral consumer the server names (the server refuses a durable here):
/// what async-nats's ordered consumers and KV watchers send.
pub fn consumer_create_ephemeral(stream: &str) -> String {
    api(&format!("CONSUMER.CREATE.{stream}"))
}
pub fn consumer_info(stream: &str, consumer: &str) -> String {
    api(&format!("CONSUMER.INFO.{stream}.{consumer}"))
}
pub fn consumer_delete(stream: &str, consumer: &str) -> String {
    api(&format!("CONSUMER.DELETE.{stream}.{consumer}"))
}
pub fn consumer_names(stream: &str) -> String {
    api(&format!("CONSUMER.NAMES.{stream}"))
}
pub fn consumer_list(stream: &str) -> String {
    api(&format!("CONSUMER.LIST.{stream}"))
}
/// Pulling the next batch from a pull consumer.
pub fn consumer_next(stream: &str, consumer: &str) -> String {
    api(&format!("CONSUMER.MSG.NEXT.{stream}.{consumer}"))
}
/// Every ack, nak, progress or term of one consumer's deliveries.
pub fn acks(stream: &str, consumer: &str) -> String {
    format!("$JS.ACK.{stream}.{consumer}.>")
}
/// Flow-control replies of push (ordered) consumers on `stream`, such as KV watchers.
pub fn flow_control(stream: &str) -> String {
    format!("$JS.FC.{stream}.>")
}

/// The stream behind KV bucket `bucket`.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}
/// The subject of key(s) `keys` (a key, or a wildcard) in `bucket`.
pub fn kv_subject(bucket: &str, keys: &str) -> String {
    format!("$KV.{bucket}.{keys}")
}

/// The micro-service protocol's verbs: discovery, description and statistics.
pub const MICRO_VERBS: [&str; 3] = ["PING", "INFO", "STATS"];
/// Every micro-service discovery subject (`nats micro ls|info|stats|ping`).
pub fn micro_all() -> String {
    "$SRV.>".to_owned()
}
/// What a service named `service` listens on: `$SRV.<verb>`, `$SRV.<verb>.<service>` and
/// `$SRV.<verb>.<service>.<id>`.
pub fn micro_service(service: &str) -> Vec<String> {
    vec![
        "$SRV.*".to_owned(),
        format!("$SRV.*.{service}"),
        format!("$SRV.*.{service}.*"),
    ]
}
