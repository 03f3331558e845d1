//! The CloudEvents 1.0 envelope (JSON structured mode): decoding with every check, and encoding.
//!
//! Decoding is the single gate every consumer passes a message through, so all
//! services reject the same messages for the same, typed reasons.

use serde::Serialize;
use serde_json::{Map, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::events::{Event, EventKind, CURRENT_MAJOR};
use crate::rights_names::publishers;
use crate::subjects::parse_event_subject;
use crate::DecodeError;

pub const SPEC_VERSION: &str = "1.0";
pub const CONTENT_TYPE: &str = "application/json";
/// Longest event id accepted; ids double as `Nats-Msg-Id` and inbox keys.
pub const MAX_EVENT_ID_LEN: usize = 128;

/// The envelope attributes of an event, everything but its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub id: String,
    pub source: String,
    pub time: OffsetDateTime,
    /// The order id (or sku) that ties the whole saga together.
    pub correlation_id: String,
    /// The id of the event this one reacts to.
    pub causation_id: Option<String>,
    /// W3C trace context, propagated from event to event.
    pub traceparent: Option<String>,
}

/// A decoded, checked event with its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub meta: Meta,
    pub event: Event,
}

#[derive(Serialize)]
struct WireOut<'a> {
    specversion: &'static str,
    id: &'a str,
    source: &'a str,
    #[serde(rename = "type")]
    ty: String,
    subject: &'a str,
    time: String,
    datacontenttype: &'static str,
    correlationid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    causationid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    data: &'a Event,
}

/// A fresh, time-ordered event id (UUIDv7).
pub fn new_event_id() -> String {
    Uuid::now_v7().to_string()
}

/// The id of the `index`-th event of kind `kind` caused by the event `cause_id`: a
/// name-based UUID (v5), so the same reaction to the same cause always has the same id.
pub fn derived_event_id(cause_id: &str, index: usize, kind: EventKind) -> String {
    Uuid::new_v5(
        &DERIVED_ID_NAMESPACE,
        format!("{cause_id}/{index}/{}", kind.name()).as_bytes(),
    )
    .to_string()
}

/// The namespace of [`derived_event_id`]s (a fixed random UUID of the shop's).
const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_2c8e_93b4_4d0a_b5e7_1c3d_9f20_8e44);

impl Envelope {
    /// A new event from `source`, starting a causal chain of its own.
    pub fn new(source: &str, event: Event) -> Envelope {
        let correlation_id = event.key().to_owned();
        Envelope {
            meta: Meta {
                id: new_event_id(),
                source: source.to_owned(),
                time: OffsetDateTime::now_utc(),
                correlation_id,
                causation_id: None,
                traceparent: None,
            },
            event,
        }
    }

    /// Marks this event as a reaction to `cause`: same correlation and trace, causation = cause id.
    pub fn caused_by(mut self, cause: &Meta) -> Envelope {
        self.meta.causation_id = Some(cause.id.clone());
        self.meta.correlation_id = cause.correlation_id.clone();
        self.meta.traceparent = cause.traceparent.clone();
        self
    }

    /// Uses a deterministic id, for events whose id must be the same when recomputed after a crash.
    pub fn with_id(mut self, id: impl Into<String>) -> Envelope {
        self.meta.id = id.into();
        self
    }

    pub fn kind(&self) -> EventKind {
        self.event.kind()
    }

    /// Whether this kind of event may come from its `source` ([`publishers`]); consumers
    /// dead-letter one that may not, so a storefront cannot announce a capture.
    ///
    /// Kept out of [`decode`] on purpose: the operators' tools (trace, audit) read what
    /// the streams hold, forgeries included, and must still show them.
    pub fn check_source(&self) -> Result<(), DecodeError> {
        let allowed = publishers(self.kind());
        if allowed.contains(&self.meta.source.as_str()) {
            return Ok(());
        }
        Err(DecodeError::UnexpectedSource {
            event: self.kind().name(),
            claimed: crate::problem::printable(self.meta.source.clone()),
            expected: allowed.join(" or "),
        })
    }

    pub fn subject(&self) -> String {
        self.event.subject()
    }

    /// The structured-mode JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        let key = self.event.key();
        let wire = WireOut {
            specversion: SPEC_VERSION,
            id: &self.meta.id,
            source: &self.meta.source,
            ty: self.kind().type_name(),
            subject: key,
            time: format_time(self.meta.time),
            datacontenttype: CONTENT_TYPE,
            correlationid: &self.meta.correlation_id,
            causationid: self.meta.causation_id.as_deref(),
            traceparent: self.meta.traceparent.as_deref(),
            data: &self.event,
        };
        // Plain structs with string keys always serialise.
        serde_json::to_vec(&wire).unwrap_or_default()
    }
}

/// RFC 3339 text of a timestamp.
pub fn format_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn take_string(obj: &mut Map<String, Value>, name: &'static str) -> Result<String, DecodeError> {
    match obj.remove(name) {
        None | Some(Value::Null) => Err(DecodeError::MissingAttribute(name)),
        Some(Value::String(s)) if s.is_empty() => Err(DecodeError::InvalidAttribute {
            name,
            reason: "must not be empty".into(),
        }),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(DecodeError::InvalidAttribute {
            name,
            reason: "must be a string".into(),
        }),
    }
}

fn take_optional(
    obj: &mut Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, DecodeError> {
    match take_string(obj, name) {
        Ok(s) => Ok(Some(s)),
        Err(DecodeError::MissingAttribute(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parses `shop.<Name>.v<major>` into a kind this version understands.
pub fn parse_type(ty: &str) -> Result<EventKind, DecodeError> {
    let unknown = || DecodeError::UnknownType(ty.to_owned());
    let rest = ty.strip_prefix("shop.").ok_or_else(unknown)?;
    let (name, version) = rest.rsplit_once('.').ok_or_else(unknown)?;
    let kind = EventKind::from_name(name).ok_or_else(unknown)?;
    let major = version.strip_prefix('v').ok_or_else(unknown)?;
    if major != CURRENT_MAJOR.to_string() {
        return Err(DecodeError::UnsupportedVersion {
            event: name.to_owned(),
            version: major.to_owned(),
        });
    }
    Ok(kind)
}

fn check_event_id(id: &str) -> Result<(), DecodeError> {
    let ok = id.len() <= MAX_EVENT_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(())
    } else {
        Err(DecodeError::InvalidAttribute {
            name: "id",
            reason: format!(
                "must be at most {MAX_EVENT_ID_LEN} printable ASCII characters without spaces"
            ),
        })
    }
}

/// Decodes and checks a message received on `subject`.
///
/// Checks, in order: JSON, every required CloudEvents attribute, the type and
/// its major version, the data against the type, and that the subject's last
/// token, the `subject` attribute and the data's key are one and the same.
/// Unknown fields in `data` are ignored for forward compatibility.
pub fn decode(subject: &str, payload: &[u8]) -> Result<Envelope, DecodeError> {
    let value: Value =
        serde_json::from_slice(payload).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    let Value::Object(mut obj) = value else {
        return Err(DecodeError::InvalidJson(
            "the top level must be a JSON object".into(),
        ));
    };
    let specversion = take_string(&mut obj, "specversion")?;
    if specversion != SPEC_VERSION {
        return Err(DecodeError::UnsupportedSpecVersion(specversion));
    }
    let id = take_string(&mut obj, "id")?;
    check_event_id(&id)?;
    let source = take_string(&mut obj, "source")?;
    let ty = take_string(&mut obj, "type")?;
    let attribute_subject = take_string(&mut obj, "subject")?;
    let time_text = take_string(&mut obj, "time")?;
    let time =
        OffsetDateTime::parse(&time_text, &Rfc3339).map_err(|e| DecodeError::InvalidAttribute {
            name: "time",
            reason: format!("must be RFC 3339: {e}"),
        })?;
    let content_type = take_string(&mut obj, "datacontenttype")?;
    if content_type != CONTENT_TYPE {
        return Err(DecodeError::InvalidAttribute {
            name: "datacontenttype",
            reason: format!("must be {CONTENT_TYPE}"),
        });
    }
    let correlation_id = take_optional(&mut obj, "correlationid")?;
    let causation_id = take_optional(&mut obj, "causationid")?;
    let traceparent = take_optional(&mut obj, "traceparent")?;
    if let Some(tp) = &traceparent {
        // It travels on as a NATS header: a line break or a control character there would
        // break the relay's publish (and could forge headers).
        if tp.is_empty() || tp.len() > 512 || !tp.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(DecodeError::InvalidAttribute {
                name: "traceparent",
                reason: "must be printable ASCII without spaces, at most 512 characters (W3C trace context)".to_owned(),
            });
        }
    }
    let kind = parse_type(&ty)?;
    let data = obj
        .remove("data")
        .filter(|d| !d.is_null())
        .ok_or(DecodeError::MissingAttribute("data"))?;
    let (subject_kind, token) =
        parse_event_subject(subject).ok_or_else(|| DecodeError::UnknownSubject {
            subject: subject.to_owned(),
        })?;
    if subject_kind != kind {
        return Err(DecodeError::SubjectTypeMismatch {
            subject: subject.to_owned(),
            expected: subject_kind.name(),
            found: kind.name(),
        });
    }
    let event = Event::from_data(kind, data)?;
    if token != attribute_subject || token != event.key() {
        return Err(DecodeError::SubjectKeyMismatch {
            token: token.to_owned(),
            attribute: attribute_subject,
            data: event.key().to_owned(),
        });
    }
    Ok(Envelope {
        meta: Meta {
            correlation_id: correlation_id.unwrap_or_else(|| token.to_owned()),
            id,
            source,
            time,
            causation_id,
            traceparent,
        },
        event,
    })
}
