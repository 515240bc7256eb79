//! The checks a Message Batches create call makes on every request.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::common::{BatchFate, Shared, is_identifier};
use crate::model::check_cache_control;

use super::results::{PlannedResult, plan_result};
use super::{ApiError, ApiResult};

pub(super) const MAX_REQUESTS: usize = 100_000;

/// Checks every request of a create call and plans its result. Valid requests are
/// first put to `admit` (the processing-queue quota) by their count: its error refuses
/// the create before any request runs.
pub(super) fn plan_batch(
    body: &[u8],
    fate: BatchFate,
    shared: &Shared,
    batch_id: &str,
    admit: impl FnOnce(usize) -> ApiResult<()>,
) -> ApiResult<Vec<PlannedResult>> {
    let body: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("The request body is not valid JSON: {e}")))?;
    let requests = body
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::invalid("requests: Field required"))?;
    if requests.is_empty() || requests.len() > MAX_REQUESTS {
        return Err(ApiError::invalid(format!(
            "requests: a batch must contain between 1 and {MAX_REQUESTS} requests, got {}.",
            requests.len()
        )));
    }
    let mut seen = HashSet::new();
    let mut checked = Vec::with_capacity(requests.len());
    for (index, request) in requests.iter().enumerate() {
        let (custom_id, params) = check_request(request, index)?;
        if !seen.insert(custom_id) {
            return Err(ApiError::invalid(format!(
                "requests.{index}.custom_id: duplicate custom_id '{custom_id}'; every custom_id must be unique within a batch."
            )));
        }
        checked.push((custom_id, params));
    }
    admit(checked.len())?;
    Ok(
        shared.run_in_results_order(batch_id, checked.len(), |index, cache| {
            let (custom_id, params) = checked[index];
            plan_result(custom_id, params, fate, cache)
        }),
    )
}

/// The custom id and params of a request that passes the create-call checks.
fn check_request(request: &Value, index: usize) -> ApiResult<(&str, &Map<String, Value>)> {
    let invalid = |field: &str, problem: &str| {
        Err(ApiError::invalid(format!(
            "requests.{index}.{field}: {problem}"
        )))
    };
    let Some(custom_id) = request.get("custom_id").and_then(Value::as_str) else {
        return invalid("custom_id", "Field required");
    };
    if !is_identifier(custom_id) {
        return invalid(
            "custom_id",
            "String should match pattern '^[a-zA-Z0-9_-]{1,64}$'",
        );
    }
    let Some(params) = request.get("params").and_then(Value::as_object) else {
        return invalid("params", "Field required");
    };
    let model = params.get("model").and_then(Value::as_str).unwrap_or("");
    if model.is_empty() {
        return invalid("params.model", "Field required");
    }
    check_message_params(params).map_err(|(field, problem)| {
        ApiError::invalid(format!("requests.{index}.params.{field}: {problem}"))
    })?;
    check_cache_control(request.get("params").unwrap_or(&Value::Null))
        .map_err(|problem| ApiError::invalid(format!("requests.{index}.params: {problem}")))?;
    Ok((custom_id, params))
}

/// The tool a `{"type":"tool","name"}` choice forces.
pub(super) fn chosen_tool_name(params: &Map<String, Value>) -> Option<&str> {
    let choice = params.get("tool_choice")?;
    if choice.get("type").and_then(Value::as_str) != Some("tool") {
        return None;
    }
    Some(choice.get("name").and_then(Value::as_str).unwrap_or(""))
}

pub(super) fn tool_named<'p>(params: &'p Map<String, Value>, name: &str) -> Option<&'p Value> {
    params
        .get("tools")
        .and_then(Value::as_array)?
        .iter()
        .find(|tool| tool.get("name").and_then(Value::as_str) == Some(name))
}

/// The checks the Messages API makes on a request body besides `model` and
/// `cache_control`: `max_tokens`, the message roles and the forced tool. Shared with
/// Bedrock, whose Claude records carry the same body. `Err` holds the field (relative
/// to the body) and the problem.
pub(crate) fn check_message_params(
    params: &Map<String, Value>,
) -> Result<(), (&'static str, String)> {
    let max_tokens = params.get("max_tokens").and_then(Value::as_u64);
    if max_tokens.unwrap_or(0) == 0 {
        return Err((
            "max_tokens",
            "Field required (an integer of at least 1)".to_string(),
        ));
    }
    let messages = match params.get("messages").and_then(Value::as_array) {
        Some(messages) if !messages.is_empty() => messages,
        _ => {
            return Err(("messages", "at least one message is required".to_string()));
        }
    };
    for message in messages {
        match message.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            Some("system") => {
                return Err((
                    "messages",
                    "Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.".to_string(),
                ));
            }
            other => {
                return Err((
                    "messages",
                    format!(
                        "Unexpected role {}; messages must be \"user\" or \"assistant\".",
                        other.unwrap_or("(missing)")
                    ),
                ));
            }
        }
    }
    if let Some(name) = chosen_tool_name(params)
        && tool_named(params, name).is_none()
    {
        return Err((
            "tool_choice",
            format!("tool_choice names tool '{name}', which is not in tools."),
        ));
    }
    Ok(())
}
