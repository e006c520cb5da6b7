//! The HTTP side of `sluice serve`: the data API for other languages (publish, receive,
//! settle, CloudEvents: `admin/data.rs`, `admin/messages.rs`, `admin/cloudevents.rs`), the
//! admin API (JSON under `/api/v1`, described by `/api/v1/openapi.json`), Prometheus
//! `/metrics`, and the dashboard at `/`. The jobs and schedules of a job store given to the
//! server are in `admin/jobs.rs`.
//!
//! Every refusal is a JSON `{"error": …, "code": …}` with a stable code and the status its
//! kind deserves (`admin/error.rs`). With API tokens configured, every route but
//! `/api/v1/health`, the OpenAPI document and the dashboard page itself needs
//! `Authorization: Bearer TOKEN`; the admin routes need the token's `admin` grant, the data
//! routes its `publish` or `consume` grant on the object they name.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use sluice_core::{
    Backend, DeadLetteredMessage, Error, Namespace, Naming, RedriveOptions, SubscriptionName,
    TopicName,
};
use sluice_embedded::EmbeddedBackend;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::auth::{grant_name, Action, Grants};
use crate::limits::ConnectionCounter;
use crate::Shared;
use listener::{CountedListener, TlsListener};

mod cloudevents;
mod consume;
mod data;
mod error;
mod jobs;
mod leases;
mod listener;
mod messages;
mod render;

pub(crate) use leases::Leases;

pub(crate) use error::ApiError;

/// The OpenAPI document of this API.
pub(crate) const OPENAPI: &str = include_str!("admin/openapi.json");
const DASHBOARD: &str = include_str!("admin/dashboard.html");

pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let app = router(shared.clone());
    let stopped = stop.clone();
    // Receives waiting for messages return at once, so they do not hold up the shutdown.
    let closing = shared.clone();
    let shutdown = async move {
        stopped.cancelled().await;
        closing.http_leases.close().await;
    };
    // Connections are counted as on the `sluice://` listener, with a budget of their own.
    let counter = Arc::new(ConnectionCounter::new(&shared.config.limits));
    let result = match tls {
        None => {
            axum::serve(CountedListener::new(listener, counter, shared.clone()), app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => match TlsListener::new(listener, tls, counter, shared.clone(), stop) {
            Ok(listener) => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Err(err) => Err(err),
        },
    };
    if let Err(err) = result {
        tracing::error!(error = %err, "the HTTP admin listener failed");
    }
}

/// Every route (the OpenAPI test walks this list).
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    // Routes of the admin API and `/metrics`: the `admin` grant.
    let admin = Router::new()
        .route("/api/v1/topics", get(list_topics))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/subscriptions/{subscription}/dlq", get(dlq_list))
        .route(
            "/api/v1/subscriptions/{subscription}/dlq/messages/{id}",
            get(dlq_show),
        )
        .route(
            "/api/v1/subscriptions/{subscription}/dlq/redrive",
            post(dlq_redrive),
        )
        .route(
            "/api/v1/subscriptions/{subscription}/dlq/purge",
            post(dlq_purge),
        )
        .route("/api/v1/jobs", get(jobs::list))
        .route("/api/v1/jobs/{id}", get(jobs::status))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/v1/schedules", get(jobs::schedules))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn(require_admin));
    // The data API: each handler checks the token's grant on the object it names.
    let data = Router::new()
        .route(
            "/api/v1/topics/{topic}",
            get(data::describe_topic).put(data::ensure_topic),
        )
        .route("/api/v1/topics/{topic}/messages", post(data::publish))
        .route(
            "/api/v1/subscriptions/{subscription}",
            get(data::describe_subscription).put(data::ensure_subscription),
        )
        .route(
            "/api/v1/subscriptions/{subscription}/receive",
            post(consume::receive),
        )
        .route(
            "/api/v1/subscriptions/{subscription}/settle",
            post(consume::settle),
        )
        .route("/api/v1/subscriptions/{subscription}/stats", get(stats))
        .route("/api/v1/asyncapi.json", get(asyncapi))
        .layer(DefaultBodyLimit::max(shared.config.max_frame));
    let api = admin
        .merge(data)
        .route_layer(middleware::from_fn_with_state(shared.clone(), authenticate));
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/api/v1/health", get(health))
        .route(
            "/api/v1/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .merge(api)
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(middleware::map_response(json_errors))
        .with_state(shared)
}

/// Axum's own refusals (a query or path that does not parse, a body it cannot read) are
/// plain text: every refusal of this API is JSON with a `code`, so they are rewritten here.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if !status.is_client_error() || is_json {
        return response;
    }
    let text = match axum::body::to_bytes(response.into_body(), 64 * 1024).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => String::new(),
    };
    let text = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("refused").to_owned()
    } else {
        text
    };
    ApiError::new(status, text).into_response()
}

/// A path no route serves: the documented JSON error, never an empty body.
async fn unknown_route(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route for {method} {}: the routes are listed in /api/v1/openapi.json",
            uri.path()
        ),
    )
}

/// A route asked with a method it does not take.
async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {method}: see /api/v1/openapi.json",
            uri.path()
        ),
    )
}

/// Admits the request's `Authorization: Bearer TOKEN` and hands its [`Grants`] to the route.
async fn authenticate(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    mut request: Request,
    next: Next,
) -> Response {
    // The scheme is case-insensitive (RFC 9110).
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match shared.config.auth.admit(token) {
        Some(grants) => {
            request.extensions_mut().insert(grants);
            next.run(request).await
        }
        None => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this server requires `Authorization: Bearer TOKEN` with one of its API tokens"
                    .into(),
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"sluice\""),
            );
            response
        }
    }
}

/// Refuses tokens without the `admin` grant.
async fn require_admin(request: Request, next: Next) -> Response {
    let admin = request
        .extensions()
        .get::<Arc<Grants>>()
        .is_some_and(|g| g.allows(Action::Admin, ""));
    if admin {
        next.run(request).await
    } else {
        ApiError::from(Error::Forbidden(format!(
            "this API token may not use {}: it needs the `admin` grant",
            request.uri().path()
        )))
        .into_response()
    }
}

pub(crate) type ApiResult<T> = Result<Json<T>, ApiError>;

/// `?namespace=`: which namespace's view (none: every object, physical names).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct View {
    pub(crate) namespace: Option<String>,
}

impl View {
    pub(crate) fn backend(&self, shared: &Shared) -> Result<EmbeddedBackend, ApiError> {
        let namespace = match self.namespace.as_deref().filter(|n| !n.is_empty()) {
            Some(ns) => Some(Namespace::new(ns).map_err(Error::from)?),
            None => None,
        };
        Ok(shared.backend.with_naming(Naming::new(namespace)))
    }
}

pub(crate) fn topic_name(name: &str) -> Result<TopicName, ApiError> {
    Ok(TopicName::new(name).map_err(Error::from)?)
}

pub(crate) fn subscription_name(name: &str) -> Result<SubscriptionName, ApiError> {
    Ok(SubscriptionName::new(name).map_err(Error::from)?)
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    version: &'static str,
    data: String,
}

async fn health(State(shared): State<Arc<Shared>>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        data: shared.config.data.display().to_string(),
    })
}

async fn list_topics(
    State(shared): State<Arc<Shared>>,
    Query(view): Query<View>,
) -> ApiResult<Vec<render::Topic>> {
    let backend = view.backend(&shared)?;
    Ok(Json(
        backend
            .list_topics()
            .await?
            .iter()
            .map(render::topic)
            .collect(),
    ))
}

/// `GET …/stats`: the `admin` grant, or `consume` on the subscription.
async fn stats(
    State(shared): State<Arc<Shared>>,
    Extension(grants): Extension<Arc<Grants>>,
    Query(view): Query<View>,
    Path(subscription): Path<String>,
) -> ApiResult<render::Stats> {
    let backend = view.backend(&shared)?;
    let name = subscription_name(&subscription)?;
    grants.check_manage(
        &[Action::Consume],
        "read the stats of subscription",
        &grant_name(backend.naming(), name.as_str()),
    )?;
    let stats = shared.prefetched.stats(&backend, &name).await?;
    Ok(Json(render::stats(&stats)))
}

async fn overview(
    State(shared): State<Arc<Shared>>,
    Query(view): Query<View>,
) -> ApiResult<render::Overview> {
    let backend = view.backend(&shared)?;
    Ok(Json(render::overview(&backend, &shared).await?))
}

#[derive(Debug, Deserialize)]
struct DlqQuery {
    namespace: Option<String>,
    limit: Option<usize>,
}

async fn dlq_list(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<DlqQuery>,
    Path(subscription): Path<String>,
) -> ApiResult<Vec<render::DeadLettered>> {
    let backend = View {
        namespace: query.namespace,
    }
    .backend(&shared)?;
    let messages = backend
        .dlq_list(
            &subscription_name(&subscription)?,
            query.limit.unwrap_or(100),
        )
        .await?;
    Ok(Json(messages.iter().map(render::dead_lettered).collect()))
}

async fn dlq_show(
    State(shared): State<Arc<Shared>>,
    Query(view): Query<View>,
    Path((subscription, id)): Path<(String, String)>,
) -> ApiResult<render::DeadLettered> {
    let backend = view.backend(&shared)?;
    let messages: Vec<DeadLetteredMessage> = backend
        .dlq_list(&subscription_name(&subscription)?, usize::MAX)
        .await?;
    messages
        .iter()
        .find(|m| m.message.id().as_str() == id)
        .map(|m| Json(render::dead_lettered(m)))
        .ok_or_else(|| {
            ApiError::from(Error::NotFound {
                kind: sluice_core::ObjectKind::Message,
                name: id,
            })
        })
}

/// Body of a redrive.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RedriveBody {
    ids: Vec<String>,
    limit: Option<usize>,
    dry_run: bool,
    rate_per_second: Option<u32>,
}

#[derive(Serialize)]
struct RedriveAnswer {
    moved: Vec<String>,
    dry_run: bool,
}

async fn dlq_redrive(
    State(shared): State<Arc<Shared>>,
    Query(view): Query<View>,
    Path(subscription): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<RedriveAnswer> {
    let backend = view.backend(&shared)?;
    // An empty body redrives everything.
    let body: RedriveBody = if body.iter().all(u8::is_ascii_whitespace) {
        RedriveBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_body(format!("the redrive body is not valid JSON: {e}")))?
    };
    let mut options = RedriveOptions::all().ids(body.ids).dry_run(body.dry_run);
    if let Some(limit) = body.limit {
        options = options.limit(limit);
    }
    if let Some(rate) = body.rate_per_second {
        options = options.rate_per_second(rate);
    }
    let report = backend
        .dlq_redrive(&subscription_name(&subscription)?, &options)
        .await?;
    Ok(Json(RedriveAnswer {
        moved: report.moved,
        dry_run: report.dry_run,
    }))
}

#[derive(Serialize)]
struct PurgeAnswer {
    purged: u64,
}

async fn dlq_purge(
    State(shared): State<Arc<Shared>>,
    Query(view): Query<View>,
    Path(subscription): Path<String>,
) -> ApiResult<PurgeAnswer> {
    let backend = view.backend(&shared)?;
    let purged = backend
        .dlq_purge(&subscription_name(&subscription)?)
        .await?;
    Ok(Json(PurgeAnswer { purged }))
}

/// `GET /api/v1/asyncapi.json`: the AsyncAPI 3.0 document of the topology, limited to what
/// the token may see (every topic it may publish to or consume from, every subscription it
/// may consume; everything with `admin`).
async fn asyncapi(
    State(shared): State<Arc<Shared>>,
    Extension(grants): Extension<Arc<Grants>>,
    Query(view): Query<View>,
    headers: HeaderMap,
) -> ApiResult<serde_json::Value> {
    let backend = view.backend(&shared)?;
    let naming = backend.naming();
    let admin = grants.allows(Action::Admin, "");
    let mut doc = sluice_runtime::asyncapi::AsyncApi::from_backend(&backend)
        .await?
        .retain(
            |t| {
                let name = grant_name(naming, t.as_str());
                admin
                    || grants.allows(Action::Publish, &name)
                    || grants.allows(Action::Consume, &name)
            },
            |s| admin || grants.allows(Action::Consume, &grant_name(naming, s.as_str())),
        )
        .send_only_to(|t| admin || grants.allows(Action::Publish, &grant_name(naming, t.as_str())))
        .title("sluice serve")
        .description(
            "The topics and subscriptions of this `sluice serve`. Publish and consume with the HTTP data API (`/api/v1/openapi.json`, docs/http-api.md) or the `sluice://` protocol (docs/protocol.md).",
        );
    // A listener on every interface is reached at the name the client used.
    let asked = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| match h.strip_prefix('[') {
            // `[::1]:7576` or `[::1]`: the bracketed address.
            Some(v6) => format!("[{}]", v6.split(']').next().unwrap_or_default()),
            None => h.split(':').next().unwrap_or_default().to_owned(),
        });
    let host = |addr: std::net::SocketAddr| match &asked {
        Some(name) if addr.ip().is_unspecified() => format!("{name}:{}", addr.port()),
        _ => addr.to_string(),
    };
    doc = doc.server(
        "sluice",
        host(shared.addr),
        "sluice",
        "The `sluice://` protocol (Rust clients)",
    );
    if let Some(http) = shared.http_addr {
        doc = doc.server(
            "http",
            host(http),
            if shared.config.tls.is_some() { "https" } else { "http" },
            "The HTTP data API: POST /api/v1/topics/{topic}/messages, /api/v1/subscriptions/{subscription}/receive and /settle",
        );
    }
    Ok(Json(doc.to_json()))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let text = render::prometheus(&shared.backend, &shared).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}
