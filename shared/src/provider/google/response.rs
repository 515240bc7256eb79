//! The `GenerateContentResponse` both Google APIs write in their results: the answer
//! text of the first candidate, refusals, truncation and token usage.

use std::borrow::Cow;

use serde::Deserialize;

use crate::provider::decode::{
    Answer, Usage, error_type, joined, lenient_count, optional_borrowed,
};

/// One request's response, borrowing its text from the line.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GenerateContentResponse<'a> {
    #[serde(borrow, default)]
    candidates: Vec<Candidate<'a>>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<UsageMetadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(borrow)]
    content: Option<Content<'a>>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    parts: Vec<Part<'a>>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default, deserialize_with = "optional_borrowed")]
    text: Option<Cow<'a, str>>,
    /// Thinking models return their thoughts as parts too; they are not the answer.
    #[serde(default)]
    thought: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
    block_reason_message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default, deserialize_with = "lenient_count")]
    prompt_token_count: u64,
    #[serde(default, deserialize_with = "lenient_count")]
    candidates_token_count: u64,
    /// Billed as output, but not part of `candidatesTokenCount`.
    #[serde(default, deserialize_with = "lenient_count")]
    thoughts_token_count: u64,
    /// Of the prompt tokens, those served from the (implicit or explicit) cache.
    #[serde(default, deserialize_with = "lenient_count")]
    cached_content_token_count: u64,
}

/// Finish reasons that mean a safety or policy system withheld the answer.
const REFUSAL_FINISH_REASONS: [&str; 8] = [
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
];

/// The answer text of a response (its first candidate's non-thought parts joined),
/// or why there is none.
pub(crate) fn response_answer(response: GenerateContentResponse<'_>) -> (Answer<'_>, Usage) {
    let usage = response
        .usage_metadata
        .map_or_else(Usage::default, |u| Usage {
            input_tokens: u.prompt_token_count,
            output_tokens: u.candidates_token_count + u.thoughts_token_count,
            cached_input_tokens: u.cached_content_token_count,
            cache_write_input_tokens: 0,
        });
    if let Some(feedback) = response.prompt_feedback
        && let Some(reason) = feedback.block_reason
    {
        let detail = feedback
            .block_reason_message
            .map_or_else(String::new, |m| format!(": {m}"));
        return (
            Answer::failed(
                error_type::REFUSAL,
                format!("the prompt was blocked ({reason}){detail}"),
            ),
            usage,
        );
    }
    let Some(candidate) = response.candidates.into_iter().next() else {
        return (
            Answer::failed(
                error_type::NO_STRUCTURED_OUTPUT,
                "the response has no candidates",
            ),
            usage,
        );
    };
    let finish_reason = candidate.finish_reason.as_deref();
    if let Some(reason) = finish_reason.filter(|r| REFUSAL_FINISH_REASONS.contains(r)) {
        return (
            Answer::failed(
                error_type::REFUSAL,
                format!("generation was stopped (finishReason {reason})"),
            ),
            usage,
        );
    }
    if finish_reason == Some("MAX_TOKENS") {
        return (Answer::truncated("finishReason MAX_TOKENS"), usage);
    }
    let text = candidate
        .content
        .map(|c| answer_text(c.parts))
        .unwrap_or_default();
    let answer = if text.trim().is_empty() {
        Answer::failed(
            error_type::NO_STRUCTURED_OUTPUT,
            format!(
                "the candidate has no text (finishReason {})",
                finish_reason.unwrap_or("none")
            ),
        )
    } else {
        Answer::Text(text)
    };
    (answer, usage)
}

/// Joins the answer parts; one part (the usual case) is passed through as is.
fn answer_text(parts: Vec<Part<'_>>) -> Cow<'_, str> {
    joined(
        parts
            .into_iter()
            .filter(|p| !p.thought)
            .filter_map(|p| p.text),
    )
    .unwrap_or(Cow::Borrowed(""))
}
