//! The result each Anthropic request gets, and the results download.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Map, Value, json};

use crate::cache::CacheState;
use crate::common::{BatchFate, download_response, new_id};
use crate::model::{Api, Failure, Finish, answering_tool, close_partial_json, run_request};

use super::batches::with_batch;
use super::validation::check_params;
use super::{Anthropic, ApiError, ApiResult};

/// How a request ended, as counted in `request_counts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResultKind {
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
pub(crate) struct PlannedResult {
    pub(crate) custom_id: String,
    pub(crate) kind: ResultKind,
    pub(crate) result: Value,
    /// A tool input whose text a `Value` cannot hold (a repeated key): the marker string
    /// standing for it in `result`, and the text.
    pub(crate) raw_input: Option<(String, String)>,
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

pub(super) fn errored(kind: &str, message: &str) -> (ResultKind, Value) {
    (
        ResultKind::Errored,
        json!({"type": "errored", "error": {"type": "error", "error": {"type": kind, "message": message}}}),
    )
}

impl PlannedResult {
    /// The results line of a request that ran: the planned result, with the raw tool
    /// input written in place of its marker.
    pub(super) fn ran_line(&self) -> String {
        self.with_raw_input(json!({"custom_id": self.custom_id, "result": self.result}).to_string())
    }

    /// `line`, a serialized line holding this result's tool input, with the raw tool
    /// input written in place of its marker.
    pub(crate) fn with_raw_input(&self, line: String) -> String {
        match &self.raw_input {
            Some((marker, raw)) => line.replacen(&format!("\"{marker}\""), raw, 1),
            None => line,
        }
    }
}

/// The result a checked request gets when it runs.
pub(crate) fn plan_result(
    custom_id: &str,
    params: &Map<String, Value>,
    fate: BatchFate,
    cache: &mut CacheState,
) -> PlannedResult {
    // Params are validated while the batch runs: a bad request errors on its own.
    if let Err((kind, message)) = check_params(params) {
        let (kind, result) = errored(kind, &message);
        return PlannedResult {
            custom_id: custom_id.to_string(),
            kind,
            result,
            raw_input: None,
        };
    }
    plan_valid_result(custom_id, params, fate, cache)
}

/// [`plan_result`] for `params` already checked (Bedrock checks its own records, whose
/// model ids are not the Messages API's).
pub(crate) fn plan_valid_result(
    custom_id: &str,
    params: &Map<String, Value>,
    fate: BatchFate,
    cache: &mut CacheState,
) -> PlannedResult {
    let planned = |(kind, result): (ResultKind, Value)| PlannedResult {
        custom_id: custom_id.to_string(),
        kind,
        result,
        raw_input: None,
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
    let params = Value::Object(params.clone());
    let model = params.get("model").and_then(Value::as_str).unwrap_or("");
    let reply = run_request(Api::Anthropic, model, &params, cache);
    let output = match reply.outcome {
        Err(Failure::ContextLength { tokens, limit }) => {
            return planned(errored(
                "invalid_request_error",
                &format!("prompt is too long: {tokens} tokens > {limit} maximum"),
            ));
        }
        Err(Failure::RateLimit) => {
            return planned(errored(
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit.",
            ));
        }
        Err(Failure::Server) => return planned(errored("api_error", "Internal server error")),
        Ok(output) => output,
    };
    let tool = answering_tool(&params);
    let mut raw_input = None;
    let content = match (tool, output.structured, output.finish) {
        (Some(tool), true, finish) => {
            let input = match serde_json::from_str::<Value>(&output.text) {
                Ok(value)
                    if finish == Finish::Stop
                        && serde_json::to_string(&value).ok().as_ref() == Some(&output.text) =>
                {
                    value
                }
                // A repeated key: the text goes into the line as written.
                Ok(_) if finish == Finish::Stop => {
                    let marker = new_id("raw_tool_input_");
                    raw_input = Some((marker.clone(), output.text.clone()));
                    Value::String(marker)
                }
                _ => close_partial_json(&output.text),
            };
            json!({
                "type": "tool_use",
                "id": new_id("toolu_"),
                "name": tool.get("name").cloned().unwrap_or(Value::Null),
                "input": input,
            })
        }
        _ => json!({"type": "text", "text": output.text}),
    };
    let stop_reason = match (output.finish, content["type"].as_str()) {
        (Finish::Refusal, _) => "refusal",
        (Finish::Length, _) => "max_tokens",
        (Finish::Stop, Some("tool_use")) => "tool_use",
        (Finish::Stop, _) => "end_turn",
    };
    PlannedResult {
        raw_input,
        ..planned((
            ResultKind::Succeeded,
            json!({"type": "succeeded", "message": {
                "id": new_id("msg_"),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [content],
                "stop_reason": stop_reason,
                "stop_sequence": null,
                "usage": reply.usage.to_provider_json(Api::Anthropic),
            }}),
        ))
    }
}
