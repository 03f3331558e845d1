//! The outbox entry codec: how the messages one transaction queued are stored in sled,
//! written by the store and read back by the relay.

use thiserror::Error;

/// One message waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    pub subject: String,
    /// Sent as `Nats-Msg-Id` so JetStream drops a re-publish.
    pub msg_id: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

/// A stored outbox entry does not decode (truncated or not an entry at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("outbox entry does not decode")]
pub struct MalformedEntry;

fn put(buf: &mut Vec<u8>, bytes: &[u8]) {
    buf.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    buf.extend_from_slice(bytes);
}

fn take<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    let bytes = buf.get(4..4 + len)?;
    *buf = &buf[4 + len..];
    Some(bytes)
}

fn take_str(buf: &mut &[u8]) -> Option<String> {
    String::from_utf8(take(buf)?.to_vec()).ok()
}

/// Starts an entry holding several messages. A single-message entry (the older form)
/// starts with its subject's length, which is never this large.
const ENTRY_MARK: [u8; 4] = [0xFF; 4];

/// Starts an entry that also names its partition and the entities its transaction
/// touched, so the relay can publish their changelog records after the messages.
const ENTRY_MARK_V2: [u8; 4] = [0xFF, 0xFF, 0xFF, 0xFE];

/// One committed transaction's outgoing messages, and what the changelog must carry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// The partition every touched entity belongs to; `None` outside partitioned services.
    pub partition: Option<u32>,
    /// The entities (order ids, or what the service keys its records by) it changed.
    pub entities: Vec<String>,
    pub messages: Vec<OutboxMessage>,
}

/// Builds an entry that names its partition and touched entities.
pub fn encode_entry_v2(partition: u32, entities: &[String], encoded: &[Vec<u8>]) -> Vec<u8> {
    let len = encoded.iter().map(|m| m.len() + 4).sum::<usize>()
        + entities.iter().map(|e| e.len() + 4).sum::<usize>()
        + 16;
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&ENTRY_MARK_V2);
    buf.extend_from_slice(&partition.to_be_bytes());
    buf.extend_from_slice(&(entities.len() as u32).to_be_bytes());
    for entity in entities {
        put(&mut buf, entity.as_bytes());
    }
    buf.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    for message in encoded {
        put(&mut buf, message);
    }
    buf
}

fn take_u32(buf: &mut &[u8]) -> Option<u32> {
    let value = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?);
    *buf = &buf[4..];
    Some(value)
}

impl Entry {
    /// Decodes any entry form: v2 (partition and entities), several messages, or one.
    pub fn decode(buf: &[u8]) -> Option<Entry> {
        let Some(mut rest) = buf.strip_prefix(&ENTRY_MARK_V2[..]) else {
            return OutboxMessage::decode_entry(buf).map(|messages| Entry {
                messages,
                ..Entry::default()
            });
        };
        let partition = take_u32(&mut rest)?;
        let count = take_u32(&mut rest)? as usize;
        let mut entities = Vec::with_capacity(count.min(4096));
        for _ in 0..count {
            entities.push(take_str(&mut rest)?);
        }
        let count = take_u32(&mut rest)? as usize;
        let mut messages = Vec::with_capacity(count.min(4096));
        for _ in 0..count {
            messages.push(OutboxMessage::decode(take(&mut rest)?)?);
        }
        Some(Entry {
            partition: Some(partition),
            entities,
            messages,
        })
    }
}

/// Builds one outbox entry from messages already in their [`OutboxMessage::encode`] form.
///
/// One entry per transaction, not per message: every sled insert and remove costs a log
/// record and a share of the flush, and a pulled batch commits dozens of messages at once.
pub fn encode_entry(encoded: &[Vec<u8>]) -> Vec<u8> {
    let len = encoded.iter().map(|m| m.len() + 4).sum::<usize>() + 8;
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&ENTRY_MARK);
    buf.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    for message in encoded {
        put(&mut buf, message);
    }
    buf
}

impl OutboxMessage {
    /// A length-prefixed binary form: cheaper than JSON-in-JSON for the payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.payload.len() + self.subject.len() + 64);
        put(&mut buf, self.subject.as_bytes());
        put(&mut buf, self.msg_id.as_bytes());
        buf.extend_from_slice(&(self.headers.len() as u32).to_be_bytes());
        for (name, value) in &self.headers {
            put(&mut buf, name.as_bytes());
            put(&mut buf, value.as_bytes());
        }
        put(&mut buf, &self.payload);
        buf
    }

    pub fn decode(mut buf: &[u8]) -> Option<OutboxMessage> {
        let subject = take_str(&mut buf)?;
        let msg_id = take_str(&mut buf)?;
        let count = u32::from_be_bytes(buf.get(..4)?.try_into().ok()?) as usize;
        buf = &buf[4..];
        let mut headers = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            headers.push((take_str(&mut buf)?, take_str(&mut buf)?));
        }
        let payload = take(&mut buf)?.to_vec();
        Some(OutboxMessage {
            subject,
            msg_id,
            headers,
            payload,
        })
    }

    /// Decodes an outbox entry: the messages one transaction queued, in publish order.
    ///
    /// Accepts the older one-message-per-entry form too, so an outbox left by an earlier
    /// version is still published after an upgrade.
    pub fn decode_entry(buf: &[u8]) -> Option<Vec<OutboxMessage>> {
        let Some(mut rest) = buf.strip_prefix(&ENTRY_MARK[..]) else {
            return OutboxMessage::decode(buf).map(|m| vec![m]);
        };
        let count = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        rest = &rest[4..];
        let mut messages = Vec::with_capacity(count.min(4096));
        for _ in 0..count {
            messages.push(OutboxMessage::decode(take(&mut rest)?)?);
        }
        Some(messages)
    }
}
