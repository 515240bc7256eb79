//! The result each Anthropic request gets, and the results download.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::common::{
    BatchFate, RequestFault, answer_for, download_response, first_half, messages_text, new_id,
    schema_breaking_answer, tokens,
};

use super::batches::with_batch;
use super::validation::{chosen_tool_name, tool_named};
use super::{Anthropic, ApiError, ApiResult};

/// How a request ended, as counted in `request_counts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResultKind {
    Succeeded,
    Errored,
    Canceled,
    Expired,
}

impl ResultKind {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Errored => "errored",
            Self::Canceled => "canceled",
            Self::Expired => "expired",
        }
    }
}

/// The `result` a request gets when it runs.
#[derive(Debug)]
pub(super) struct PlannedResult {
    pub(super) custom_id: String,
    pub(super) kind: ResultKind,
    pub(super) result: Value,
}

pub(super) fn results_url(base_url: &str, id: &str) -> String {
    format!("{base_url}/v1/messages/batches/{id}/results")
}

pub(super) async fn batch_results(
    State(state): State<Arc<Anthropic>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let results = with_batch(&state, &id, |batch| {
        batch
            .ended
            .as_ref()
            .map(|ended| ended.results.clone())
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "Message batch {id} has not finished processing; results are not available yet."
                ))
            })
    })?;
    Ok(download_response(
        results,
        "application/binary",
        state.shared.drop_results_after(),
    ))
}

/// The tool the model answers with: the forced one, else the first.
fn answering_tool(params: &Map<String, Value>) -> Option<&Value> {
    match chosen_tool_name(params) {
        Some(name) => tool_named(params, name),
        None => params.get("tools").and_then(Value::as_array)?.first(),
    }
}

pub(super) fn errored(kind: &str, message: &str) -> (ResultKind, Value) {
    (
        ResultKind::Errored,
        json!({"type": "errored", "error": {"type": "error", "error": {"type": kind, "message": message}}}),
    )
}

/// The result a checked request gets when it runs.
pub(super) fn plan_result(
    custom_id: &str,
    params: &Map<String, Value>,
    fate: BatchFate,
) -> PlannedResult {
    let planned = |(kind, result): (ResultKind, Value)| PlannedResult {
        custom_id: custom_id.to_string(),
        kind,
        result,
    };
    match fate {
        BatchFate::AllFail => {
            return planned(errored("api_error", "Internal server error"));
        }
        // Message Batches validate params while processing: a batch that fails
        // validation reports every request as an invalid request.
        BatchFate::FailValidation => {
            return planned(errored(
                "invalid_request_error",
                "The request could not be validated.",
            ));
        }
        BatchFate::Complete | BatchFate::Expire => {}
    }
    let messages = params
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let text = messages_text(messages);
    let seed = format!("{custom_id}{text}");
    let tool = answering_tool(params);
    let schema = tool
        .and_then(|tool| tool.get("input_schema"))
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}));
    let tool_use = |input: Value| {
        json!({
            "type": "tool_use",
            "id": new_id("toolu_"),
            "name": tool.and_then(|t| t.get("name")).cloned().unwrap_or(Value::Null),
            "input": input,
        })
    };
    let text_block = |text: String| json!({"type": "text", "text": text});
    let answer = || answer_for(&schema, &seed);
    let (content, stop_reason) = match RequestFault::find_in(&text) {
        Some(RequestFault::ProviderError) => {
            return planned(errored(
                "invalid_request_error",
                "prompt is too long: 210000 tokens > 200000 maximum",
            ));
        }
        Some(RequestFault::RateLimit) => {
            return planned(errored(
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit.",
            ));
        }
        Some(RequestFault::ServerError) => {
            return planned(errored("api_error", "Internal server error"));
        }
        Some(RequestFault::SchemaBreak) if tool.is_some() => {
            (tool_use(schema_breaking_answer(&schema, &seed)), "tool_use")
        }
        Some(RequestFault::SchemaBreak | RequestFault::NonJson) => (
            text_block(format!(
                "I could not produce structured output, but here is a summary: {}",
                answer()
            )),
            "end_turn",
        ),
        Some(RequestFault::Refusal) => (
            text_block("I'm sorry, but I can't help with that request.".to_string()),
            "refusal",
        ),
        Some(RequestFault::Truncate) => (
            text_block(first_half(&answer().to_string()).to_string()),
            "max_tokens",
        ),
        None if tool.is_some() => (tool_use(answer()), "tool_use"),
        None => (text_block(answer().to_string()), "end_turn"),
    };
    let input_tokens = tokens(&text);
    let output_tokens = tokens(&content.to_string());
    planned((
        ResultKind::Succeeded,
        json!({"type": "succeeded", "message": {
            "id": new_id("msg_"),
            "type": "message",
            "role": "assistant",
            "model": params.get("model").cloned().unwrap_or(Value::Null),
            "content": [content],
            "stop_reason": stop_reason,
            "stop_sequence": null,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "service_tier": "batch",
            },
        }}),
    ))
}
