//! The router: the `/v1` API and `/tokenize` / `/detokenize` behind the API key, `/health`
//! and `/metrics` open (as vLLM leaves them), CORS, OpenAI-style JSON errors for unknown
//! paths and methods, the body limit.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use super::error::{ApiError, ServerError};
use super::openai::{ModelCard, ModelList};
use super::state::AppState;
use super::{chat, completions, metrics, responses, tokenize};

/// The CORS layer for `origins` (`*`: any; none: no layer); an origin that is not a valid
/// header value is an error.
pub(crate) fn cors(origins: &[String]) -> Result<Option<CorsLayer>, ServerError> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let list = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim_end_matches('/'))
                    .map_err(|_| ServerError::Config(format!("allowed origin `{o}` is not valid")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    // Any header (clients send `Authorization`, `Content-Type`, the SDKs' `X-Stainless-*`);
    // no credentials (the API key is a header, not a cookie).
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(Any)
            .max_age(std::time::Duration::from_secs(600)),
    ))
}

/// Every route, behind `cors` when given (outermost, so preflights are answered before the
/// API key is asked for).
pub(crate) fn router(state: Arc<AppState>, cors: Option<CorsLayer>) -> Router {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/responses", post(responses::create))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

/// With an API key, `/v1` requests must carry `Authorization: Bearer <key>`.
async fn authorize(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| same(g.as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first difference, so timing does not reveal the key.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn card(state: &AppState) -> ModelCard {
    ModelCard {
        id: state.config.model_name.clone(),
        object: "model",
        created: state.created,
        owned_by: "deepseek-rs",
        max_model_len: state.engine.max_context(),
    }
}

async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![card(&state)],
    })
}

async fn model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    if id != state.config.model_name {
        return Err(ApiError::model_not_found(&id));
    }
    Ok(Json(card(&state)))
}

/// 200 while serving, 503 once shutdown began (load balancers stop routing here).
async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.closing() {
        return ApiError::shutting_down().into_response();
    }
    (StatusCode::OK, "ok").into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = metrics::render(&state.engine.stats(), state.in_flight());
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::no_route(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::no_route(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}
