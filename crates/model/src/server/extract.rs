//! Request bodies: read within the size limit (413, sent once an over-long body has been read
//! to its end) and the read timeout (408 when the client goes silent mid-body), parsed as a
//! JSON object (400 for anything else), then typed field by field with the failing field
//! named in `param`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;
use super::state::AppState;

/// A JSON object body.
pub(crate) struct JsonBody(pub Value);

impl FromRequest<Arc<AppState>> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let config = &state.config;
        let bytes = read_within(req, config.max_body_bytes, config.read_timeout).await?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
        Ok(Self(value))
    }
}

/// Bodies up to this many times the limit are read to their end (and dropped) before the 413
/// goes out; longer ones are cut off.
const DRAIN_FACTOR: usize = 8;

/// The whole body, if it holds at most `limit` bytes (otherwise a 413) and no wait for its next
/// chunk lasts over `silence` (otherwise a 408: a client trickling a body would hold its
/// connection for ever).
///
/// An over-long body is still read to its end, kept nowhere, before the 413 is sent (up to
/// [`DRAIN_FACTOR`] times the limit, judged by `Content-Length` up front and by the bytes
/// seen): a server that answers while the client is still sending and then closes the
/// connection makes the client fail writing (broken pipe) or reuse a dead connection, so it
/// never sees the 413 (the reason for nginx's "lingering close").
async fn read_within(
    req: Request,
    limit: usize,
    silence: std::time::Duration,
) -> Result<Bytes, ApiError> {
    use futures_util::StreamExt;
    let cap = limit.saturating_mul(DRAIN_FACTOR);
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(ApiError::too_large(limit));
    }
    let mut stream = req.into_body().into_data_stream();
    let (mut kept, mut seen) = (Vec::new(), 0usize);
    loop {
        let next = tokio::time::timeout(silence, stream.next())
            .await
            .map_err(|_| ApiError::timeout(silence))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| ApiError::invalid(format!("cannot read the body: {e}")))?;
        seen = seen.saturating_add(chunk.len());
        if seen <= limit {
            kept.extend_from_slice(&chunk);
        } else if seen > cap {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(kept.into())
}

/// Reads `T` from `value`; a type error names the field (`param`) by its path.
pub(crate) fn parse<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        if path == "." {
            ApiError::invalid(message)
        } else {
            ApiError::invalid_param(&path, format!("{path}: {message}"))
        }
    })
}
