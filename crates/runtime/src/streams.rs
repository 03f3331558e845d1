//! Declares the shop's streams idempotently (create or update), from the contract's specs.

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::RuntimeError;

/// How one stream should look; kept free of contract types so the runtime stays domain-free.
#[derive(Debug, Clone)]
pub struct StreamDecl {
    pub name: String,
    pub subjects: Vec<String>,
    pub description: String,
    pub max_age: Duration,
    pub duplicate_window: Duration,
    pub replicas: usize,
}

impl StreamDecl {
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
        }
    }
}

/// Creates each stream, or updates it to the declared settings if it exists.
pub async fn declare_streams(
    js: &jetstream::Context,
    decls: &[StreamDecl],
) -> Result<(), RuntimeError> {
    for decl in decls {
        let config = stream::Config {
            name: decl.name.clone(),
            subjects: decl.subjects.clone(),
            description: Some(decl.description.clone()),
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: decl.max_age,
            duplicate_window: decl.duplicate_window,
            allow_direct: true,
            num_replicas: decl.replicas.max(1),
            ..Default::default()
        };
        js.create_or_update_stream(config)
            .await
            .map_err(RuntimeError::js(format!("declaring stream {}", decl.name)))?;
    }
    Ok(())
}
