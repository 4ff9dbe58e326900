//! Errors: [`ApiError`], what a client is told (an HTTP status and OpenAI's error body), and
//! [`ServerError`], why [`super::serve`] itself failed.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::engine::SubmitError;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Accepting or serving connections failed.
    #[error("server I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A configuration file of the checkpoint could not be read.
    #[error("server configuration: {0}")]
    Config(String),
    /// The engine's shutdown did not complete.
    #[error("engine shutdown: {0}")]
    Shutdown(String),
}

/// A failed request: its status and the OpenAI-style body
/// `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a `Retry-After` header (overload only).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        Self {
            status,
            message,
            kind,
            param: None,
            code: Some(code),
            retry_after: None,
        }
    }

    /// 400: a value the server cannot accept.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_value",
            message.into(),
        )
    }

    /// 400 naming the offending request field.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::invalid(message)
        }
    }

    /// The same error with its `param` `from` called `to` (what a route's clients sent).
    pub fn with_param_renamed(mut self, from: &str, to: &str) -> Self {
        if self.param.as_deref() == Some(from) {
            self.param = Some(to.to_string());
        }
        self
    }

    /// 400: a feature of the API this server does not implement.
    pub fn unsupported(param: &str, what: &str) -> Self {
        Self::invalid_param(param, format!("{what} is not supported by this server"))
    }

    /// 401: missing or wrong API key.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            "missing or invalid API key (send `Authorization: Bearer <key>`)".into(),
        )
    }

    /// 404 for an unknown model name.
    pub fn model_not_found(name: &str) -> Self {
        Self {
            param: Some("model".into()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                format!("the model `{name}` does not exist"),
            )
        }
    }

    /// 404 / 405 for paths and methods the server does not route.
    pub fn no_route(status: StatusCode, message: String) -> Self {
        let code = if status == StatusCode::METHOD_NOT_ALLOWED {
            "method_not_allowed"
        } else {
            "not_found"
        };
        Self::new(status, "invalid_request_error", code, message)
    }

    /// 413: a body over the server's limit.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!("the request body exceeds the server's limit of {limit} bytes"),
        )
    }

    /// 408: the client went silent before its request was whole.
    pub fn timeout(silence: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            format!(
                "no part of the request body arrived for {} s",
                silence.as_secs_f64()
            ),
        )
    }

    /// 503 while shutting down.
    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "shutting_down",
            "the server is shutting down".into(),
        )
    }

    /// 500: the engine failed while running an accepted request.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            message.into(),
        )
    }

    /// The body, also sent as an SSE event when a stream fails after it started.
    pub fn body_json(&self) -> Vec<u8> {
        serde_json::to_vec(&Body {
            error: Detail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_default()
    }

    /// Maps a refused submission; a full queue says when to come back.
    pub fn from_submit(e: SubmitError, retry_after: u64) -> Self {
        match e {
            SubmitError::Invalid { param, message } => Self::invalid_param(param, message),
            SubmitError::QueueFull(_) => Self {
                retry_after: Some(retry_after),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limit_error",
                    "queue_full",
                    format!("{e}; retry later"),
                )
            },
            SubmitError::ShuttingDown => Self::shutting_down(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, "{}", self.message);
        } else {
            tracing::debug!(status = %self.status, "{}", self.message);
        }
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body_json(),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
