//! The checks a Message Batches create call makes on every request.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::common::{BatchFate, Shared, is_identifier};
use crate::model::check_cache_control;

use super::models::{self, Model};
use super::results::{PlannedResult, plan_result};
use super::{ApiError, ApiResult};

pub(super) const MAX_REQUESTS: usize = 100_000;

/// Checks the envelope of every request of a create call and plans its result. The
/// requests are first put to `admit` (the processing-queue quota) by their count: its
/// error refuses the create before any request runs.
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

/// The custom id and params of a request that passes the create-call checks: the
/// envelope, and the parameters the Message Batches guide lists as not supported in a
/// batch (streaming, and `max_tokens: 0` cache pre-warming). Everything else in
/// `params` is checked while the batch runs ([`check_params`]).
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
    if params
        .get("stream")
        .is_some_and(|stream| stream != &Value::Bool(false))
    {
        return invalid(
            "params.stream",
            "Streaming is not supported for requests in a message batch.",
        );
    }
    if params.get("max_tokens").and_then(Value::as_u64) == Some(0) {
        return invalid(
            "params.max_tokens",
            "max_tokens: 0 (cache pre-warming) is not supported in a message batch; it must be at least 1.",
        );
    }
    Ok((custom_id, params))
}

/// The problem the API finds in a request's `params` while the batch runs (it becomes
/// the request's `invalid_request_error` result), or `Err` with the error type and
/// message; `Ok` when they are valid.
pub(super) fn check_params(params: &Map<String, Value>) -> Result<(), (&'static str, String)> {
    let invalid = |message: String| Err(("invalid_request_error", message));
    let model = params.get("model").and_then(Value::as_str).unwrap_or("");
    if model.is_empty() {
        return invalid("model: Field required".to_string());
    }
    let Some(known) = models::find(model) else {
        return Err(("not_found_error", format!("model: {model}")));
    };
    check_message_params(params).map_err(|message| ("invalid_request_error", message))?;
    if let Some(config) = params.get("output_config") {
        check_output_config(config, known).map_err(|problem| ("invalid_request_error", problem))?;
    }
    check_cache_control(&Value::Object(params.clone()))
        .map_err(|problem| ("invalid_request_error", problem))
}

/// The checks of a Messages body that do not depend on the model: `max_tokens`,
/// `temperature`, the roles of `messages` and the tool `tool_choice` names. Bedrock's
/// Claude records (the same body without `model`) go through them too. `Err` is the
/// API's message, which starts with the field's name.
pub(crate) fn check_message_params(params: &Map<String, Value>) -> Result<(), String> {
    let invalid = |message: String| Err(message);
    if params
        .get("max_tokens")
        .and_then(Value::as_u64)
        .is_none_or(|n| n == 0)
    {
        return invalid("max_tokens: Field required (an integer of at least 1)".to_string());
    }
    if let Some(temperature) = params.get("temperature") {
        match temperature.as_f64() {
            Some(t) if (0.0..=1.0).contains(&t) => {}
            _ => {
                return invalid(format!(
                    "temperature: Input should be a number from 0 to 1, got {temperature}"
                ));
            }
        }
    }
    let messages = match params.get("messages").and_then(Value::as_array) {
        Some(messages) if !messages.is_empty() => messages,
        _ => return invalid("messages: at least one message is required".to_string()),
    };
    for message in messages {
        match message.get("role").and_then(Value::as_str) {
            Some("user" | "assistant") => {}
            Some("system") => {
                return invalid(
                    "messages: Unexpected role \"system\". The Messages API accepts a top-level `system` parameter, not \"system\" as an input message role.".to_string(),
                );
            }
            other => {
                return invalid(format!(
                    "messages: Unexpected role {}; messages must be \"user\" or \"assistant\".",
                    other.unwrap_or("(missing)")
                ));
            }
        }
    }
    if let Some(name) = chosen_tool_name(params)
        && tool_named(params, name).is_none()
    {
        return invalid(format!(
            "tool_choice: tool_choice names tool '{name}', which is not in tools."
        ));
    }
    Ok(())
}

/// `output_config` on a model that takes it, with a JSON schema in the supported
/// subset. The API's own wordings where they are known.
fn check_output_config(config: &Value, model: &Model) -> Result<(), String> {
    let Some(format) = config.get("format") else {
        return Ok(());
    };
    if !model.output_config {
        // What the API answers for a model without structured outputs.
        return Err("output_config.format: Extra inputs are not permitted".to_string());
    }
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Err("output_config.format.type: Input should be 'json_schema'".to_string());
    }
    let Some(schema) = format.get("schema") else {
        return Err("output_config.format.schema: Field required".to_string());
    };
    SubsetCheck { root: schema }
        .node(schema, &mut Vec::new())
        .map_err(|problem| format!("output_config.format.schema: {problem}"))
}

/// Properties structured outputs refuse, by the type they appear on.
const UNSUPPORTED_PROPERTIES: &[(&str, &[&str])] = &[
    (
        "integer",
        &[
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
            "multipleOf",
        ],
    ),
    (
        "number",
        &[
            "minimum",
            "maximum",
            "exclusiveMinimum",
            "exclusiveMaximum",
            "multipleOf",
        ],
    ),
    ("string", &["minLength", "maxLength", "pattern"]),
    (
        "array",
        &["maxItems", "uniqueItems", "prefixItems", "contains"],
    ),
    (
        "object",
        &[
            "minProperties",
            "maxProperties",
            "patternProperties",
            "propertyNames",
        ],
    ),
];

/// String formats structured outputs support.
const SUPPORTED_FORMATS: &[&str] = &[
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "uri",
    "ipv4",
    "ipv6",
    "uuid",
];

/// The names in a schema's `type` (a string or a list of strings).
fn type_names(map: &Map<String, Value>) -> Vec<&str> {
    match map.get("type") {
        Some(Value::String(name)) => vec![name.as_str()],
        Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// Walks a structured-outputs schema for what the API refuses.
struct SubsetCheck<'a> {
    root: &'a Value,
}

impl<'a> SubsetCheck<'a> {
    /// `refs` are the `$ref`s being followed: meeting one again means recursion.
    fn node(&self, node: &'a Value, refs: &mut Vec<&'a str>) -> Result<(), String> {
        let Value::Object(map) = node else {
            return Ok(());
        };
        if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
            if refs.contains(&reference) {
                return Err("recursive schemas are not supported".to_string());
            }
            let target = reference
                .strip_prefix('#')
                .and_then(|pointer| self.root.pointer(pointer))
                .ok_or_else(|| format!("$ref '{reference}' could not be resolved"))?;
            refs.push(reference);
            self.node(target, refs)?;
            refs.pop();
        }
        for type_name in type_names(map) {
            self.check_type(map, type_name)?;
        }
        for (keyword, child) in map {
            match (keyword.as_str(), child) {
                ("properties", Value::Object(properties)) => {
                    for property in properties.values() {
                        self.node(property, refs)?;
                    }
                }
                ("items", item) => self.node(item, refs)?,
                ("anyOf" | "allOf", Value::Array(variants)) => {
                    for variant in variants {
                        self.node(variant, refs)?;
                    }
                }
                ("$defs" | "definitions", Value::Object(defs)) => {
                    for def in defs.values() {
                        self.node(def, &mut Vec::new())?;
                    }
                }
                ("oneOf" | "not" | "if" | "then" | "else", _) => {
                    return Err(format!("'{keyword}' is not supported"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn check_type(&self, map: &Map<String, Value>, type_name: &str) -> Result<(), String> {
        let unsupported = UNSUPPORTED_PROPERTIES
            .iter()
            .find(|(name, _)| *name == type_name)
            .map_or(&[][..], |(_, properties)| properties);
        if let Some(property) = unsupported.iter().find(|p| map.contains_key(**p)) {
            return Err(format!(
                "For '{type_name}' type, property '{property}' is not supported"
            ));
        }
        match type_name {
            "object" => match map.get("additionalProperties") {
                Some(Value::Bool(false)) => Ok(()),
                Some(Value::Bool(true)) => Err(
                    "For 'object' type, 'additionalProperties: true' is not supported. Please set 'additionalProperties' to false"
                        .to_string(),
                ),
                _ => Err(
                    "For 'object' type, 'additionalProperties' must be explicitly set to false"
                        .to_string(),
                ),
            },
            "string" => match map.get("format").and_then(Value::as_str) {
                Some(format) if !SUPPORTED_FORMATS.contains(&format) => Err(format!(
                    "For 'string' type, format '{format}' is not supported"
                )),
                _ => Ok(()),
            },
            "array" => match map.get("minItems").and_then(Value::as_u64) {
                Some(n) if n > 1 => Err(format!(
                    "For 'array' type, 'minItems' values other than 0 or 1 are not supported, got {n}"
                )),
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }
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
