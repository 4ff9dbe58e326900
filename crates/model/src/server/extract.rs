//! Request bodies: read within the size limit (413), parsed as a JSON object (400 for
//! anything else), then typed field by field with the failing field named in `param`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::ApiError;
use super::state::AppState;

/// A JSON object body.
pub(crate) struct JsonBody(pub Value);

impl FromRequest<Arc<AppState>> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(state.config.max_body_bytes)
            } else {
                ApiError::invalid(format!("cannot read the body: {}", rejection.body_text()))
            }
        })?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}")))?;
        if !value.is_object() {
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
        Ok(Self(value))
    }
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
