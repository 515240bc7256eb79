//! A provider emulator: a real HTTP server on loopback that speaks the OpenAI Batch,
//! Anthropic Message Batches, Vertex AI batch prediction (with Cloud Storage and an
//! OAuth token endpoint), Gemini batch mode and Amazon Bedrock batch inference (SigV4,
//! input and output in an S3 such as moto) protocols, as strictly as the real APIs.
//!
//! Control endpoints under `/_emulator/` (not part of any provider API) let tests
//! switch faults on, move batches to their end deterministically and set the
//! providers' batch quotas.

pub mod answer;
pub mod anthropic;
pub mod bedrock;
pub mod cache;
pub mod catalogue;
pub mod common;
pub mod gcs;
pub mod gemini;
pub mod google;
pub mod harness;
pub mod model;
pub mod oauth;
pub mod openai;
pub mod quota;
pub mod vertex;
pub mod workload;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use common::{BatchFate, BedrockConfig, Config, FaultPlan, HttpFault, Shared};
pub use quota::{QuotaFigures, QuotaReport, Quotas};

/// A running emulator. Dropping it stops the server.
pub struct Emulator {
    pub addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl Emulator {
    /// Starts on `127.0.0.1` on a free port.
    pub async fn start(config: Config) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0", config).await
    }

    pub async fn start_on(bind: &str, config: Config) -> std::io::Result<Self> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(config, format!("http://{addr}")));
        let app = app(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
        })
    }

    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Replaces the fault plan (the same as `POST /_emulator/faults`).
    pub fn set_faults(&self, plan: FaultPlan) {
        *self.shared.faults.lock().unwrap() = plan;
    }

    /// Replaces the batch quotas and starts their figures afresh (the same as
    /// `POST /_emulator/quotas`).
    pub fn set_quotas(&self, quotas: Quotas) {
        self.shared.quotas.set(quotas);
    }

    /// What the quotas saw (the same as `GET /_emulator/quotas`).
    pub fn quota_report(&self) -> QuotaReport {
        self.shared.quotas.report()
    }

    /// Points Bedrock batch jobs at an S3 endpoint (a moto server), or at none.
    pub fn set_s3_endpoint(&self, endpoint: Option<String>) {
        *common::lock(&self.shared.s3_endpoint) = endpoint;
    }

    /// Replaces the Bedrock settings (credentials, record limits) for the calls from now on.
    pub fn set_bedrock(&self, settings: BedrockConfig) {
        *common::lock(&self.shared.bedrock) = settings;
    }

    /// Moves every batch, existing or future, past all its lifecycle stages.
    pub fn finish_all(&self, on: bool) {
        *self.shared.finish_all.lock().unwrap() = on;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The whole emulator as one router.
pub fn app(shared: Arc<Shared>) -> Router {
    let control = Router::new()
        .route("/_emulator/faults", post(set_faults))
        .route("/_emulator/advance", post(advance))
        .route("/_emulator/quotas", post(set_quotas).get(quota_report))
        .route("/_emulator/bedrock", post(bedrock::set_settings))
        .with_state(shared.clone());
    let google = Router::new()
        .merge(vertex::router(shared.clone()))
        .merge(gemini::router(shared.clone()))
        .layer(middleware::from_fn_with_state(shared.clone(), http_faults));
    // OpenAI, Anthropic and Bedrock apply the fault layer themselves, inside the layer that adds
    // request ids, so that injected faults carry a request id too.
    let routed = Router::new()
        .merge(openai::router(shared.clone()))
        .merge(anthropic::router(shared.clone()))
        .merge(bedrock::router(shared.clone()))
        .merge(google)
        .merge(control);
    // A layer on a router runs after its routing; wrapped as the fallback of an empty
    // router, `gemini::route_v1` sees each request before any route is chosen.
    Router::new()
        .fallback_service(routed)
        .layer(middleware::from_fn(gemini::route_v1))
}

async fn set_faults(State(shared): State<Arc<Shared>>, body: axum::Json<FaultPlan>) -> StatusCode {
    *shared.faults.lock().unwrap() = body.0;
    StatusCode::NO_CONTENT
}

/// `POST /_emulator/quotas` with a [`Quotas`] object replaces the quotas.
async fn set_quotas(State(shared): State<Arc<Shared>>, body: axum::Json<Quotas>) -> StatusCode {
    shared.quotas.set(body.0);
    StatusCode::NO_CONTENT
}

/// `GET /_emulator/quotas` answers the [`QuotaReport`].
async fn quota_report(State(shared): State<Arc<Shared>>) -> axum::Json<QuotaReport> {
    axum::Json(shared.quotas.report())
}

/// `POST /_emulator/advance` with `{"batch_id": "…"}` ends one batch (a Bedrock job by
/// its id or ARN), with `{}` all.
async fn advance(
    State(shared): State<Arc<Shared>>,
    body: axum::Json<serde_json::Value>,
) -> StatusCode {
    match body.0.get("batch_id").and_then(|v| v.as_str()) {
        Some(id) => {
            shared.forced.lock().unwrap().insert(id.to_string(), ());
        }
        None => *shared.finish_all.lock().unwrap() = true,
    }
    StatusCode::NO_CONTENT
}

/// Applies HTTP faults from the plan: the next matching calls get the planned status
/// (with `Retry-After` where set) or a delay.
pub(crate) async fn http_faults(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let hit = {
        let mut plan = shared.faults.lock().unwrap();
        let path = request.uri().path().to_string();
        let method = request.method().as_str().to_string();
        let found = plan.http.iter_mut().find(|f| {
            f.times > 0
                && path.starts_with(&f.path_prefix)
                && f.method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(&method))
        });
        found.map(|f| {
            f.times -= 1;
            f.clone()
        })
    };
    let Some(fault) = hit else {
        return next.run(request).await;
    };
    if fault.delay_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(fault.delay_ms)).await;
    }
    if fault.status == 0 {
        return next.run(request).await;
    }
    let status = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (
        status,
        [("content-type", "application/json")],
        Body::from(fault_body(request.uri().path(), status)),
    )
        .into_response();
    if let Some(seconds) = fault.retry_after_s {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(seconds));
    }
    response
}

/// The error body each provider sends with an HTTP error, chosen by path.
fn fault_body(path: &str, status: StatusCode) -> String {
    let message = format!(
        "emulated fault: {}",
        status.canonical_reason().unwrap_or("error")
    );
    if path.starts_with("/model-invocation-job") || path.starts_with("/listTagsForResource") {
        // Bedrock (AWS restJson): the error code travels in `x-amzn-ErrorType`.
        serde_json::json!({"message": message}).to_string()
    } else if path.starts_with("/v1/messages") {
        let kind = match status.as_u16() {
            429 => "rate_limit_error",
            529 => "overloaded_error",
            _ => "api_error",
        };
        serde_json::json!({"type":"error","error":{"type":kind,"message":message}}).to_string()
    } else if path.starts_with("/v1/") && !path.starts_with("/v1/projects") {
        let kind = if status.as_u16() == 429 {
            "rate_limit_exceeded"
        } else {
            "server_error"
        };
        serde_json::json!({"error":{"message":message,"type":kind,"param":null,"code":null}})
            .to_string()
    } else {
        let code = status.as_u16();
        let state = match code {
            429 => "RESOURCE_EXHAUSTED",
            503 => "UNAVAILABLE",
            _ => "INTERNAL",
        };
        serde_json::json!({"error":{"code":code,"message":message,"status":state}}).to_string()
    }
}
