//! Vertex AI batch prediction (`projects/{p}/locations/{l}/batchPredictionJobs`) for
//! Gemini models, reading input from and writing predictions to the emulated Cloud
//! Storage, behind OAuth bearer tokens. Served under `/v1` and `/v1beta1` (the
//! google-genai SDK's default).
//!
//! A job is QUEUED, PENDING and RUNNING for one lifecycle step each, then ends. The
//! input is read and the predictions written when the job ends; problems with the
//! input bucket, objects or lines fail the job then (as the real service does
//! asynchronously), while a bad request line only fails that line.

mod batches;
mod results;
#[cfg(test)]
mod tests;
mod validation;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::middleware;
use axum::routing::get;
use batches::Job;
use batches::create_job;
use batches::delete_job;
use batches::get_job;
use batches::job_method;
use batches::list_jobs;

use crate::common::Shared;
use crate::gcs::{self, Storage};
use crate::oauth::{self, Tokens};

/// Lifecycle step at which a job starts running; it ends one step later.
const RUNNING_STEP: u32 = 2;
/// Job numbers look like Vertex's 19-digit ids.
const FIRST_JOB_NUMBER: u64 = 7_100_000_000_000_000_000;

/// Vertex batch prediction, Cloud Storage and the OAuth token endpoint, sharing one
/// token registry and one object store.
pub fn router(shared: Arc<Shared>) -> Router {
    let tokens = Arc::new(Tokens::new(shared.config.api_key.clone()));
    let storage = Arc::new(Storage::default());
    let vertex = Arc::new(Vertex {
        shared: shared.clone(),
        storage: storage.clone(),
        jobs: Mutex::new(BTreeMap::new()),
        next_number: AtomicU64::new(FIRST_JOB_NUMBER),
    });
    let mut jobs = Router::new();
    for version in ["v1", "v1beta1"] {
        let collection =
            format!("/{version}/projects/{{project}}/locations/{{location}}/batchPredictionJobs");
        jobs = jobs
            .route(&collection, get(list_jobs).post(create_job))
            .route(
                &format!("{collection}/{{job}}"),
                get(get_job).post(job_method).delete(delete_job),
            );
    }
    jobs.route_layer(middleware::from_fn_with_state(
        tokens.clone(),
        oauth::require_bearer,
    ))
    .with_state(vertex)
    .merge(gcs::router(storage, tokens.clone(), shared))
    .merge(oauth::router(tokens))
}

struct Vertex {
    shared: Arc<Shared>,
    storage: Arc<Storage>,
    jobs: Mutex<BTreeMap<u64, Job>>,
    next_number: AtomicU64,
}
