//! The models each provider serves, in one place: a request for any other model fails
//! the way that provider's API fails it (OpenAI: a `model_not_found` line in the error
//! file; Vertex AI and the Gemini API: 404 `NOT_FOUND` when the batch is created).
//!
//! The lists are dated: a model the provider has shut down by then is left out, so a
//! test that uses one fails here as it would there. Anthropic's list lives with its
//! emulator (`crate::anthropic`).

/// OpenAI chat models, for `/v1/chat/completions` and `/v1/responses` batches.
///
/// As of 2026-12-03, from <https://developers.openai.com/api/docs/models> and
/// <https://developers.openai.com/api/docs/deprecations> (as openai-python 3.57.0's
/// `ChatModel` carries them): the text chat models whose announced shutdown date has
/// not passed (so no `o4-mini`, `o3-mini`, `o1`, `gpt-4.1-nano`, `gpt-4-turbo` or
/// `gpt-3.5-turbo`, shut down on 2026-10-23; `gpt-5` and `o3` until 2026-12-11).
pub const OPENAI_CHAT_MODELS: &[&str] = &[
    "gpt-6-astra",
    "gpt-6.2-astra",
    "gpt-6-sol",
    "gpt-6.1-sol",
    "gpt-6.2-sol",
    "gpt-6.1-terra",
    "gpt-6-luna",
    "gpt-5.6-sol",
    "gpt-5.6-terra",
    "gpt-5.6-luna",
    "gpt-5.5",
    "gpt-5.5-2026-04-23",
    "gpt-5.4",
    "gpt-5.4-mini",
    "gpt-5.4-nano",
    "gpt-5.4-mini-2026-03-17",
    "gpt-5.4-nano-2026-03-17",
    "gpt-5.2",
    "gpt-5.2-2025-12-11",
    "gpt-5.2-pro",
    "gpt-5.2-pro-2025-12-11",
    "gpt-5.1",
    "gpt-5.1-2025-11-13",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-5-2025-08-07",
    "gpt-5-mini-2025-08-07",
    "gpt-5-nano-2025-08-07",
    "gpt-4.1",
    "gpt-4.1-mini",
    "gpt-4.1-2025-04-14",
    "gpt-4.1-mini-2025-04-14",
    "o3",
    "o3-2025-04-16",
    "gpt-4o",
    "gpt-4o-2024-11-20",
    "gpt-4o-2024-08-06",
    "gpt-4o-mini",
    "gpt-4o-mini-2024-07-18",
];

/// Models only the Responses API serves (on top of [`OPENAI_CHAT_MODELS`]).
///
/// As of 2026-12-03, from <https://developers.openai.com/api/docs/models> (openai-python
/// 3.57.0's `ResponsesModel`), the text models among them.
pub const OPENAI_RESPONSES_ONLY_MODELS: &[&str] = &[
    "gpt-5.5-pro",
    "gpt-5.5-pro-2026-04-23",
    "gpt-5-pro",
    "gpt-5-pro-2025-10-06",
    "gpt-5-codex",
    "gpt-5.1-codex-max",
    "o3-pro",
    "o3-pro-2025-06-10",
];

/// OpenAI embedding models, for `/v1/embeddings` batches, with their default
/// vector length.
///
/// As of 2026-12-03, from <https://developers.openai.com/api/docs/models> (openai-python
/// 3.57.0's `EmbeddingModel`) and <https://developers.openai.com/api/docs/guides/embeddings>.
pub const OPENAI_EMBEDDING_MODELS: &[(&str, usize)] = &[
    ("text-embedding-3-small", 1536),
    ("text-embedding-3-large", 3072),
    ("text-embedding-ada-002", 1536),
];

/// OpenAI legacy completion models, for `/v1/completions` batches.
///
/// As of 2026-12-03, from <https://developers.openai.com/api/docs/models> (openai-python
/// 3.57.0's `CompletionCreateParams.model`).
pub const OPENAI_COMPLETION_MODELS: &[&str] =
    &["gpt-3.5-turbo-instruct", "davinci-002", "babbage-002"];

/// Gemini Developer API text models that take batch requests.
///
/// As of 2026-12-03, from <https://ai.google.dev/gemini-api/docs/models> (google-genai
/// 3.6.1's `interactions.Model`, text models only; the 2.0 models are shut down).
pub const GEMINI_MODELS: &[&str] = &[
    "gemini-4-argon",
    "gemini-4-carbon",
    "gemini-4-hydrogen",
    "gemini-4-neon",
    "gemini-3.8-flash",
    "gemini-3.7-flash",
    "gemini-3.6-flash",
    "gemini-3.5-flash",
    "gemini-3.5-flash-lite",
    "gemini-3.1-pro-preview",
    "gemini-3.1-flash-lite",
    "gemini-3-flash-preview",
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "gemini-pro-latest",
    "gemini-flash-latest",
    "gemini-flash-lite-latest",
];

/// Vertex AI publisher models (`publishers/google/models/{model}`) that batch
/// prediction serves.
///
/// As of 2026-12-03, from
/// <https://docs.cloud.google.com/gemini-enterprise-agent-platform/reference/models/batch-prediction-api>
/// ("Supported models") and
/// <https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions>.
pub const VERTEX_MODELS: &[&str] = &[
    "gemini-4-argon",
    "gemini-4-carbon",
    "gemini-4-hydrogen",
    "gemini-3.8-flash",
    "gemini-3.7-flash",
    "gemini-3.6-flash",
    "gemini-3.5-flash",
    "gemini-3.5-flash-lite",
    "gemini-3.1-pro-preview",
    "gemini-3.1-flash-lite",
    "gemini-3-flash-preview",
    "gemini-2.5-pro",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
];

/// Which model family an OpenAI model name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAiKind {
    /// Chat Completions and Responses.
    Chat,
    /// Responses only.
    ResponsesOnly,
    /// Embeddings, with the default vector length.
    Embedding(usize),
    /// Legacy completions.
    Completion,
}

/// The family of OpenAI model `name`, or `None` for a model OpenAI does not serve.
pub fn openai_model(name: &str) -> Option<OpenAiKind> {
    if OPENAI_CHAT_MODELS.contains(&name) {
        Some(OpenAiKind::Chat)
    } else if OPENAI_RESPONSES_ONLY_MODELS.contains(&name) {
        Some(OpenAiKind::ResponsesOnly)
    } else if let Some(&(_, dimensions)) = OPENAI_EMBEDDING_MODELS.iter().find(|(m, _)| *m == name)
    {
        Some(OpenAiKind::Embedding(dimensions))
    } else if OPENAI_COMPLETION_MODELS.contains(&name) {
        Some(OpenAiKind::Completion)
    } else {
        None
    }
}

/// Whether the Gemini API serves `model` (the id after `models/`).
pub fn is_gemini_model(model: &str) -> bool {
    GEMINI_MODELS.contains(&model)
}

/// Whether Vertex AI batch prediction serves publisher model `model`.
pub fn is_vertex_model(model: &str) -> bool {
    VERTEX_MODELS.contains(&model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_models_fall_in_one_family_each() {
        assert_eq!(openai_model("gpt-4o-mini"), Some(OpenAiKind::Chat));
        assert_eq!(openai_model("gpt-5-pro"), Some(OpenAiKind::ResponsesOnly));
        assert_eq!(
            openai_model("text-embedding-3-large"),
            Some(OpenAiKind::Embedding(3072))
        );
        assert_eq!(
            openai_model("gpt-3.5-turbo-instruct"),
            Some(OpenAiKind::Completion)
        );
        // Shut down on 2026-10-23, or never a model.
        for gone in ["o4-mini", "gpt-3.5-turbo", "gpt-3", "gpt-5.1-mini"] {
            assert_eq!(openai_model(gone), None, "{gone}");
        }
    }

    #[test]
    fn google_lists_hold_current_models_only() {
        assert!(is_gemini_model("gemini-2.5-flash") && is_vertex_model("gemini-2.5-flash"));
        assert!(!is_gemini_model("gemini-2.0-flash") && !is_vertex_model("gemini-2.0-flash-001"));
        assert!(!is_gemini_model("gemini-1.5-pro"));
        let all = [GEMINI_MODELS, VERTEX_MODELS, OPENAI_CHAT_MODELS];
        for list in all {
            let unique: std::collections::HashSet<_> = list.iter().collect();
            assert_eq!(unique.len(), list.len(), "no name twice");
        }
    }
}
