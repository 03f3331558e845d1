//! Declares the shop's streams idempotently (create or update), from the contract's specs.
//!
//! The replica count is part of a declaration: on a cluster an existing stream with a
//! different count is rescaled, and the log says so, because that moves data between nodes.
//!
//! At start-up a service waits for JetStream ([`declare_streams_waiting`]): a cluster
//! that has no meta leader yet, or servers that do not answer, are waited for with a log
//! line every few seconds that says what is missing, instead of failing the start.

use std::time::Duration;

use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind};
use async_nats::jetstream::{self, stream, ErrorCode};

use crate::shutdown::Shutdown;
use crate::RuntimeError;

/// How one stream should look; kept free of contract types so the runtime stays domain-free.
#[derive(Debug, Clone)]
pub struct StreamDecl {
    pub name: String,
    pub subjects: Vec<String>,
    pub description: String,
    pub max_age: Duration,
    pub duplicate_window: Duration,
    /// How many servers keep a copy: 1 on a single server, 3 (or 5) on a cluster.
    pub replicas: usize,
    /// Rewrites subjects as messages are stored: (source, destination).
    pub subject_transform: Option<(String, String)>,
}

impl StreamDecl {
    /// A single-replica declaration; see [`StreamDecl::with_replicas`].
    pub fn new(
        name: &str,
        subjects: &[String],
        description: &str,
        max_age: Duration,
        duplicate_window: Duration,
    ) -> StreamDecl {
        StreamDecl {
            name: name.to_owned(),
            subjects: subjects.to_vec(),
            description: description.to_owned(),
            max_age,
            duplicate_window,
            replicas: 1,
            subject_transform: None,
        }
    }

    /// The same declaration with a subject transform applied on ingest (for example
    /// one that appends a partition token).
    pub fn with_subject_transform(mut self, source: &str, destination: &str) -> StreamDecl {
        self.subject_transform = Some((source.to_owned(), destination.to_owned()));
        self
    }

    /// The same declaration kept on `replicas` servers (at least one).
    pub fn with_replicas(mut self, replicas: usize) -> StreamDecl {
        self.replicas = replicas.max(1);
        self
    }

    fn config(&self) -> stream::Config {
        stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            description: Some(self.description.clone()),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: self.max_age,
            duplicate_window: self.duplicate_window,
            allow_direct: true,
            num_replicas: self.replicas.max(1),
            subject_transform: self
                .subject_transform
                .as_ref()
                .map(|(source, destination)| stream::SubjectTransform {
                    source: source.clone(),
                    destination: destination.clone(),
                }),
            ..Default::default()
        }
    }
}

/// What declaring one stream did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// The stream did not exist.
    Created,
    /// The stream existed with the declared replica count; its settings were reapplied.
    Updated,
    /// The stream existed with another replica count and was rescaled to the declared one.
    Rescaled { from: usize, to: usize },
}

/// Creates each stream, or updates it to the declared settings if it exists; returns
/// what happened to each, in the order of `decls`.
pub async fn declare_streams(
    js: &jetstream::Context,
    decls: &[StreamDecl],
) -> Result<Vec<Declared>, RuntimeError> {
    let mut outcomes = Vec::with_capacity(decls.len());
    for decl in decls {
        outcomes.push(declare_stream(js, decl).await?);
    }
    Ok(outcomes)
}

/// [`declare_streams`], waiting as long as it takes (until `shutdown`) while JetStream
/// does not answer or has no leader, and saying so every few seconds. A refusal (a
/// stream that cannot be declared as asked) still fails at once.
pub async fn declare_streams_waiting(
    js: &jetstream::Context,
    decls: &[StreamDecl],
    shutdown: &Shutdown,
) -> Result<Vec<Declared>, RuntimeError> {
    let started = std::time::Instant::now();
    let mut pause = DECLARE_PAUSE;
    let mut outcomes = Vec::with_capacity(decls.len());
    for decl in decls {
        loop {
            match try_declare_stream(js, decl).await {
                Ok(outcome) => {
                    outcomes.push(outcome);
                    break;
                }
                Err(Failed {
                    unanswered: true,
                    error,
                }) => {
                    tracing::warn!(
                        stream = %decl.name,
                        error = %error,
                        waited = ?started.elapsed(),
                        "waiting for JetStream ({}): {error}; trying again in {pause:?}",
                        waiting_for(&error)
                    );
                    let mut shutdown = shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.requested() => return Err(error),
                    }
                    pause = (pause * 2).min(WAIT_PAUSE_MAX);
                }
                Err(Failed { error, .. }) => return Err(error),
            }
        }
    }
    if started.elapsed() > DECLARE_PAUSE {
        tracing::info!(waited = ?started.elapsed(), "JetStream answers; streams declared");
    }
    Ok(outcomes)
}

/// The longest pause between two attempts while waiting for JetStream.
const WAIT_PAUSE_MAX: Duration = Duration::from_secs(5);

/// What a declaration that got no useful answer is waiting for, in an operator's words.
fn waiting_for(error: &RuntimeError) -> &'static str {
    let text = error.to_string();
    if text.contains("no responders") {
        "no server answers JetStream requests: JetStream not enabled, or not reachable yet"
    } else if text.contains("temporarily unavailable") || text.contains("10008") {
        "no meta leader yet: the cluster is still electing one"
    } else if text.contains("timed out") || text.contains("TimedOut") {
        "no answer in time: the cluster may be forming or electing a leader"
    } else {
        "JetStream is not available yet"
    }
}

/// How often one declaration is tried when the servers do not answer in time: a cluster
/// that has just formed, or is electing a stream leader, can take longer than one request.
const DECLARE_ATTEMPTS: u32 = 4;
/// The pause after the first unanswered attempt; it grows by as much each time.
const DECLARE_PAUSE: Duration = Duration::from_millis(500);

/// A declaration that did not go through, and whether the servers only failed to answer
/// in time (worth another attempt) rather than refused it.
struct Failed {
    unanswered: bool,
    error: RuntimeError,
}

async fn declare_stream(
    js: &jetstream::Context,
    decl: &StreamDecl,
) -> Result<Declared, RuntimeError> {
    let mut attempt = 1;
    loop {
        match try_declare_stream(js, decl).await {
            Ok(outcome) => return Ok(outcome),
            Err(Failed {
                unanswered: true,
                error,
            }) if attempt < DECLARE_ATTEMPTS => {
                let pause = DECLARE_PAUSE * attempt;
                tracing::warn!(
                    stream = %decl.name,
                    attempt,
                    error = %error,
                    "no answer in time while declaring stream {}; trying again in {pause:?}",
                    decl.name
                );
                tokio::time::sleep(pause).await;
                attempt += 1;
            }
            Err(Failed { error, .. }) => return Err(error),
        }
    }
}

async fn try_declare_stream(
    js: &jetstream::Context,
    decl: &StreamDecl,
) -> Result<Declared, Failed> {
    let config = decl.config();
    let existing = existing_replicas(js, &decl.name).await?;
    let outcome = match existing {
        None => Declared::Created,
        Some(from) if from != config.num_replicas => Declared::Rescaled {
            from,
            to: config.num_replicas,
        },
        Some(_) => Declared::Updated,
    };
    if let Declared::Rescaled { from, to } = outcome {
        tracing::warn!(
            stream = %decl.name,
            from,
            to,
            "stream {} has {from} replica(s) but {to} are declared; updating it to {to} \
             (the servers copy its data; on a single server more than 1 is refused)",
            decl.name
        );
    }
    // Create-or-update rather than acting on `existing` alone: another service may
    // create the stream between the lookup and here.
    js.create_or_update_stream(config).await.map_err(|e| {
        let unanswered = match e.kind() {
            CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => true,
            CreateStreamErrorKind::JetStream(js_error) => {
                js_error.error_code() == ErrorCode::CLUSTER_NOT_AVAILABLE
            }
            _ => false,
        };
        Failed {
            unanswered,
            error: RuntimeError::js(format!("declaring stream {}", decl.name))(e),
        }
    })?;
    Ok(outcome)
}

/// The replica count of the stream as it exists now, `None` if it does not exist.
async fn existing_replicas(js: &jetstream::Context, name: &str) -> Result<Option<usize>, Failed> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().config.num_replicas)),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(js_error)
                if js_error.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            GetStreamErrorKind::JetStream(js_error)
                if js_error.error_code() == ErrorCode::CLUSTER_NOT_AVAILABLE =>
            {
                Err(Failed {
                    unanswered: true,
                    error: RuntimeError::js(format!("looking up stream {name}"))(e),
                })
            }
            kind => Err(Failed {
                unanswered: matches!(kind, GetStreamErrorKind::Request),
                error: RuntimeError::js(format!("looking up stream {name}"))(e),
            }),
        },
    }
}
