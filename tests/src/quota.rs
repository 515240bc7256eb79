//! Provider batch quotas, configurable per run: the limits that stop large jobs on the
//! real APIs (see `providers.md`, "Quotas that stop large jobs"), and figures showing
//! whether a client ever went past them.
//!
//! Each provider's create handler measures what is in use now and what the new batch
//! asks for, and calls [`QuotaState::admit`]; how a refusal looks is the provider's
//! business (OpenAI accepts the batch then fails it, Bedrock answers
//! `ServiceQuotaExceededException`, the others answer 429).

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::common::lock;

/// The limits in force. Every field is optional: absent (or `null`) means no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// OpenAI: input tokens of the not-ended batches of one model (per organisation).
    pub openai_enqueued_tokens: Option<u64>,
    /// Anthropic: requests of the batches whose `processing_status` is `in_progress`.
    pub anthropic_queue_requests: Option<u64>,
    /// Vertex AI: batch prediction jobs not in a terminal state, per project and location.
    pub vertex_concurrent_jobs: Option<u32>,
    /// Gemini API: prompt tokens of the not-ended batches of one model.
    pub gemini_enqueued_tokens: Option<u64>,
    /// Amazon Bedrock: batch inference jobs not yet ended (`Submitted` to `InProgress`,
    /// and `Stopping`), per account and region.
    pub bedrock_concurrent_jobs: Option<u32>,
}

/// One provider's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    OpenAiEnqueuedTokens,
    AnthropicQueueRequests,
    VertexConcurrentJobs,
    GeminiEnqueuedTokens,
    BedrockConcurrentJobs,
}

impl Quota {
    /// Every quota, in [`QuotaReport`] order.
    const ALL: [Quota; 5] = [
        Self::OpenAiEnqueuedTokens,
        Self::AnthropicQueueRequests,
        Self::VertexConcurrentJobs,
        Self::GeminiEnqueuedTokens,
        Self::BedrockConcurrentJobs,
    ];
}

impl Quota {
    fn index(self) -> usize {
        self as usize
    }

    fn limit(self, quotas: &Quotas) -> Option<u64> {
        match self {
            Self::OpenAiEnqueuedTokens => quotas.openai_enqueued_tokens,
            Self::AnthropicQueueRequests => quotas.anthropic_queue_requests,
            Self::VertexConcurrentJobs => quotas.vertex_concurrent_jobs.map(u64::from),
            Self::GeminiEnqueuedTokens => quotas.gemini_enqueued_tokens,
            Self::BedrockConcurrentJobs => quotas.bedrock_concurrent_jobs.map(u64::from),
        }
    }

    fn figures(self, report: &mut QuotaReport) -> &mut QuotaFigures {
        match self {
            Self::OpenAiEnqueuedTokens => &mut report.openai,
            Self::AnthropicQueueRequests => &mut report.anthropic,
            Self::VertexConcurrentJobs => &mut report.vertex,
            Self::GeminiEnqueuedTokens => &mut report.gemini,
            Self::BedrockConcurrentJobs => &mut report.bedrock,
        }
    }
}

/// What one quota saw since the quotas were last set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaFigures {
    /// The limit in force (`null`: none, and nothing is counted).
    pub limit: Option<u64>,
    /// The highest in-use figure an admitted batch brought the quota to (itself included).
    pub peak: u64,
    /// Batches refused: creates answered 429 (Bedrock: `ServiceQuotaExceededException`), or
    /// OpenAI batches failed with `token_limit_exceeded`.
    pub refused: u64,
    /// Batches that fit.
    pub admitted: u64,
}

/// `GET /_emulator/quotas`: each provider's figures. A client that never created a
/// batch past a limit shows `refused == 0 && peak <= limit`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaReport {
    pub openai: QuotaFigures,
    pub anthropic: QuotaFigures,
    pub vertex: QuotaFigures,
    pub gemini: QuotaFigures,
    pub bedrock: QuotaFigures,
}

/// What a batch being created would bring its quota to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// What the batches counted now hold, before this one.
    pub in_use: u64,
    /// What this batch asks for.
    pub amount: u64,
}

/// A batch that does not fit: the figures its provider's error words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub limit: u64,
    pub in_use: u64,
    pub amount: u64,
}

#[derive(Debug, Default)]
struct Book {
    quotas: Quotas,
    report: QuotaReport,
}

/// The quotas and their figures, kept in [`crate::Shared`].
#[derive(Debug, Default)]
pub struct QuotaState {
    book: Mutex<Book>,
    /// One per [`Quota`]: while a quota is set, its provider's creates run one at a time,
    /// so that two concurrent creates cannot both take the same room (a create measures
    /// the room before it stores its batch, with work between).
    gates: [tokio::sync::Mutex<()>; Quota::ALL.len()],
}

impl QuotaState {
    /// Replaces the quotas and starts their figures afresh.
    pub fn set(&self, quotas: Quotas) {
        let mut report = QuotaReport::default();
        for quota in Quota::ALL {
            quota.figures(&mut report).limit = quota.limit(&quotas);
        }
        *lock(&self.book) = Book { quotas, report };
    }

    /// The quotas in force.
    pub fn quotas(&self) -> Quotas {
        lock(&self.book).quotas.clone()
    }

    /// The figures so far.
    pub fn report(&self) -> QuotaReport {
        lock(&self.book).report.clone()
    }

    /// The limit of `quota`, if one is set.
    pub fn limit(&self, quota: Quota) -> Option<u64> {
        quota.limit(&lock(&self.book).quotas)
    }

    /// Held by a create call from before it measures the room until it has stored its
    /// batch; `None` (no waiting) when `quota` is not set.
    pub async fn gate(&self, quota: Quota) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.limit(quota) {
            Some(_) => Some(self.gates[quota.index()].lock().await),
            None => None,
        }
    }

    /// Decides whether a batch being created fits in `quota`, and counts it. `measure`
    /// runs only when a limit is set (measuring can be costly); answers the amount it
    /// measured (0 without a limit), or the refusal.
    pub fn admit(&self, quota: Quota, measure: impl FnOnce() -> Demand) -> Result<u64, Refusal> {
        let Some(limit) = self.limit(quota) else {
            return Ok(0);
        };
        // Measured without the book locked: measuring locks the provider's own store.
        let Demand { in_use, amount } = measure();
        let mut book = lock(&self.book);
        let figures = quota.figures(&mut book.report);
        let total = in_use.saturating_add(amount);
        if total > limit {
            figures.refused += 1;
            return Err(Refusal {
                limit,
                in_use,
                amount,
            });
        }
        figures.admitted += 1;
        figures.peak = figures.peak.max(total);
        Ok(amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_counts() {
        let state = QuotaState::default();
        let demand = |in_use, amount| move || Demand { in_use, amount };
        assert_eq!(
            state.admit(Quota::GeminiEnqueuedTokens, || unreachable!(
                "no limit, no measure"
            )),
            Ok(0)
        );
        state.set(Quotas {
            gemini_enqueued_tokens: Some(100),
            ..Quotas::default()
        });
        assert_eq!(
            state.admit(Quota::GeminiEnqueuedTokens, demand(40, 60)),
            Ok(60)
        );
        assert_eq!(
            state.admit(Quota::GeminiEnqueuedTokens, demand(60, 41)),
            Err(Refusal {
                limit: 100,
                in_use: 60,
                amount: 41
            })
        );
        let report = state.report();
        assert_eq!(
            report.gemini,
            QuotaFigures {
                limit: Some(100),
                peak: 100,
                refused: 1,
                admitted: 1
            }
        );
        assert_eq!(report.openai, QuotaFigures::default());
    }

    #[tokio::test]
    async fn the_control_endpoint_sets_and_reports_the_quotas() {
        use axum::http::StatusCode;

        use crate::common::testing::{call, call_json, frozen_shared};

        let shared = frozen_shared();
        let router = crate::app(shared.clone());
        let json = [("content-type", "application/json")];
        let set = r#"{"openai_enqueued_tokens": 90000, "vertex_concurrent_jobs": 4}"#;
        let (status, _) = call(&router, "POST", "/_emulator/quotas", &json, set).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(shared.quotas.quotas().vertex_concurrent_jobs, Some(4));
        let (status, report) = call_json(&router, "GET", "/_emulator/quotas", &[], "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            report,
            serde_json::json!({
                "openai": {"limit": 90000, "peak": 0, "refused": 0, "admitted": 0},
                "anthropic": {"limit": null, "peak": 0, "refused": 0, "admitted": 0},
                "vertex": {"limit": 4, "peak": 0, "refused": 0, "admitted": 0},
                "gemini": {"limit": null, "peak": 0, "refused": 0, "admitted": 0},
                "bedrock": {"limit": null, "peak": 0, "refused": 0, "admitted": 0},
            })
        );
        // Setting replaces: what is left out has no limit any more.
        let (status, _) = call(&router, "POST", "/_emulator/quotas", &json, "{}").await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(shared.quotas.quotas(), Quotas::default());
        let (status, _) = call(
            &router,
            "POST",
            "/_emulator/quotas",
            &json,
            r#"{"typo": 1}"#,
        )
        .await;
        assert!(status.is_client_error());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<Quotas>(r#"{"openai_tokens": 5}"#).is_err());
        let quotas: Quotas = serde_json::from_str(r#"{"vertex_concurrent_jobs": 2}"#).unwrap();
        assert_eq!(quotas.vertex_concurrent_jobs, Some(2));
        assert_eq!(quotas.openai_enqueued_tokens, None);
    }
}
