//! Provider quotas: the limits an account's unfinished batches must stay under, and
//! whether one more batch fits next to the ones running now.
//!
//! A limit is known from a job's spec (`quota`) or the deployment (`QUOTA_LIMITS`, by
//! model or by provider). The pipeline counts what runs from the records of every open
//! job (`pipeline/waiting.rs`), so that two jobs of one account share its quota. The
//! count is an upper estimate (see [`estimated_tokens`]): a part that would pass a
//! limit waits instead of being created and failed by the provider.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::{ModelRef, ProviderKind};

/// Input tokens a batch input of `bytes` bytes counts at most: one token per three
/// bytes. Tokenizers give about four bytes of English per token and the body's JSON
/// framing counts no tokens, so real counts come out lower, and CJK text (three bytes
/// a character, about a token each) still does not pass it.
pub fn estimated_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(3)
}

/// The most batch input bytes a part may have for its [`estimated_tokens`] to stay
/// within `tokens`.
pub fn max_bytes_for_tokens(tokens: u64) -> usize {
    usize::try_from(tokens.saturating_mul(3)).unwrap_or(usize::MAX)
}

/// Limits of one provider account (all optional: an unknown limit is not enforced,
/// and a refusal by the provider still makes the part wait rather than fail).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaLimits {
    /// Input tokens of unfinished batches per model: OpenAI's enqueued-token limit,
    /// the Gemini API's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_tokens: Option<u64>,
    /// Requests of unfinished batches per provider: Anthropic's processing queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_requests: Option<u64>,
    /// Unfinished batches per provider: Vertex AI's concurrent batch prediction jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_batches: Option<u64>,
}

impl QuotaLimits {
    /// These limits, each one this lacks taken from `fallback`.
    pub fn or(self, fallback: Self) -> Self {
        Self {
            enqueued_tokens: self.enqueued_tokens.or(fallback.enqueued_tokens),
            queued_requests: self.queued_requests.or(fallback.queued_requests),
            open_batches: self.open_batches.or(fallback.open_batches),
        }
    }

    /// True when no limit is known.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The deployment's limits, by model (`openai/gpt-4o-mini`) or by provider
/// (`openai`): the variable `QUOTA_LIMITS`, a JSON object of [`QuotaLimits`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct QuotaTable(BTreeMap<String, QuotaLimits>);

impl QuotaTable {
    /// Reads `QUOTA_LIMITS`' value; every key must name a provider or a model.
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        for key in table.0.keys() {
            let known = match key.split_once('/') {
                Some(_) => key.parse::<ModelRef>().is_ok(),
                None => key.parse::<ProviderKind>().is_ok(),
            };
            if !known {
                return Err(format!("{key:?} is neither a provider nor provider/model"));
            }
        }
        Ok(table)
    }

    /// The limits for `model`: its own entry, completed by its provider's.
    pub fn limits_for(&self, model: &ModelRef) -> QuotaLimits {
        let own = self.0.get(&model.to_string()).copied().unwrap_or_default();
        own.or(self
            .0
            .get(model.provider.as_str())
            .copied()
            .unwrap_or_default())
    }
}

/// What one part's batch holds at its provider while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Its input tokens (estimated).
    pub tokens: u64,
    /// Its provider requests.
    pub requests: u64,
}

/// What unfinished batches hold at the providers: tokens by model, requests and
/// batches by provider.
#[derive(Debug, Default)]
pub struct InFlight {
    tokens: HashMap<String, u64>,
    requests: HashMap<ProviderKind, u64>,
    batches: HashMap<ProviderKind, u64>,
}

impl InFlight {
    /// Counts one more running batch of `model`.
    pub fn add(&mut self, model: &ModelRef, load: Load) {
        *self.tokens.entry(model.to_string()).or_default() += load.tokens;
        *self.requests.entry(model.provider).or_default() += load.requests;
        *self.batches.entry(model.provider).or_default() += 1;
    }

    /// Whether a batch of `load` fits under `limits` next to what runs now; if it
    /// does, it is counted.
    pub fn admit(&mut self, model: &ModelRef, limits: &QuotaLimits, load: Load) -> bool {
        let tokens = self.tokens.get(&model.to_string()).copied().unwrap_or(0);
        let requests = self.requests.get(&model.provider).copied().unwrap_or(0);
        let batches = self.batches.get(&model.provider).copied().unwrap_or(0);
        let within = |limit: Option<u64>, used: u64, more: u64| {
            limit.is_none_or(|limit| used.saturating_add(more) <= limit)
        };
        let fits = within(limits.enqueued_tokens, tokens, load.tokens)
            && within(limits.queued_requests, requests, load.requests)
            && within(limits.open_batches, batches, 1);
        if fits {
            self.add(model, load);
        }
        fits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(text: &str) -> ModelRef {
        text.parse().unwrap()
    }

    #[test]
    fn a_model_entry_is_completed_by_its_providers() {
        let table = QuotaTable::parse(
            r#"{"openai/gpt-4o-mini": {"enqueued_tokens": 2000000},
                "openai": {"enqueued_tokens": 90000, "open_batches": 5}}"#,
        )
        .unwrap();
        let mini = table.limits_for(&model("openai/gpt-4o-mini"));
        assert_eq!(mini.enqueued_tokens, Some(2_000_000));
        assert_eq!(mini.open_batches, Some(5));
        let other = table.limits_for(&model("openai/gpt-4o"));
        assert_eq!(other.enqueued_tokens, Some(90_000));
        assert!(
            table
                .limits_for(&model("anthropic/claude-3-5-haiku-latest"))
                .is_empty()
        );
    }

    #[test]
    fn unknown_keys_and_fields_are_refused() {
        assert!(QuotaTable::parse(r#"{"openia": {"open_batches": 1}}"#).is_err());
        assert!(QuotaTable::parse(r#"{"openai": {"open_batch": 1}}"#).is_err());
    }

    #[test]
    fn admits_up_to_each_limit_and_counts_what_it_admits() {
        let limits = QuotaLimits {
            enqueued_tokens: Some(100),
            open_batches: Some(3),
            ..QuotaLimits::default()
        };
        let (mini, big) = (model("openai/gpt-4o-mini"), model("openai/gpt-4o"));
        let load = |tokens| Load {
            tokens,
            requests: 1,
        };
        let mut in_flight = InFlight::default();
        assert!(in_flight.admit(&mini, &limits, load(60)));
        assert!(!in_flight.admit(&mini, &limits, load(41)), "61..101 tokens");
        assert!(in_flight.admit(&mini, &limits, load(40)));
        // Tokens count per model, batches per provider.
        assert!(in_flight.admit(&big, &limits, load(100)));
        assert!(!in_flight.admit(&big, &limits, load(0)), "a fourth batch");
    }

    #[test]
    fn estimates_stay_above_real_token_counts() {
        assert_eq!(estimated_tokens(0), 0);
        assert_eq!(estimated_tokens(7), 3);
        assert!(estimated_tokens(max_bytes_for_tokens(1000)) <= 1000);
    }
}
