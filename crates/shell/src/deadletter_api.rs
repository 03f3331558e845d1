//! The dead-letter endpoints every service serves (`<service>.deadletters.list|replay|discard`),
//! added to each host as a runtime [`Extension`] over the operator's [`DeadLetterBook`].

use std::future::Future;

use bytes::Bytes;
use shop_events::api::deadletters::{
    discard_subject, list_subject, replay_subject, DiscardRequest, ListRequest, ReplayRequest,
    DISCARD_ENDPOINT, LIST_ENDPOINT, REPLAY_ENDPOINT,
};
use shop_runtime::host::{Extension, ExtensionCtx};
use shop_runtime::micro::{parse_request, reply, ApiError, ApiResult, BoxedEndpoint};

use crate::deadletter_book::{DeadLetterBook, DeadLetterError};

/// The sled tree where operators' decisions are kept; its name is part of every
/// existing service's data, so it does not change.
const TREE: &str = "deadletters";

/// What [`crate::host_config`] adds to every host.
pub const EXTENSION: Extension = Extension {
    tree: TREE,
    endpoints,
};

fn endpoints(ctx: &ExtensionCtx) -> Vec<BoxedEndpoint> {
    let book = DeadLetterBook::new(ctx.js.clone(), ctx.store.clone(), ctx.tree, &ctx.service);
    vec![
        endpoint(LIST_ENDPOINT, list_subject(&ctx.service), &book, list),
        endpoint(REPLAY_ENDPOINT, replay_subject(&ctx.service), &book, replay),
        endpoint(
            DISCARD_ENDPOINT,
            discard_subject(&ctx.service),
            &book,
            discard,
        ),
    ]
}

fn endpoint<F, Fut>(name: &str, subject: String, book: &DeadLetterBook, answer: F) -> BoxedEndpoint
where
    F: Fn(DeadLetterBook, Bytes) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ApiResult> + Send + 'static,
{
    let book = book.clone();
    BoxedEndpoint::new(name, subject, move |body| answer(book.clone(), body))
}

async fn list(book: DeadLetterBook, body: Bytes) -> ApiResult {
    let request: ListRequest = parse_request(&body)?;
    reply(&book.list(request.effective_limit()).await?)
}

async fn replay(book: DeadLetterBook, body: Bytes) -> ApiResult {
    let request: ReplayRequest = parse_request(&body)?;
    reply(&book.replay(request.seq).await.map_err(api_error)?)
}

async fn discard(book: DeadLetterBook, body: Bytes) -> ApiResult {
    let request: DiscardRequest = parse_request(&body)?;
    let reason = request
        .reason
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("`reason` is required: say why the dead letter is discarded")
        })?;
    let view = book
        .discard(request.seq, &reason)
        .await
        .map_err(api_error)?;
    reply(&view)
}

fn api_error(e: DeadLetterError) -> ApiError {
    match e {
        DeadLetterError::NotFound(_) => ApiError::not_found(e.to_string()),
        // The request cannot be honoured as asked; nothing inside failed.
        DeadLetterError::NotOurs { .. } | DeadLetterError::Truncated { .. } => {
            ApiError::bad_request(e.to_string())
        }
        DeadLetterError::Failed(_) | DeadLetterError::Unrecorded(_) => {
            ApiError::internal(e.to_string())
        }
    }
}
