//! Input file and request body checks, as the real API makes them while `validating`.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::common::{BatchFate, Shared, is_identifier};

use super::endpoints::Endpoint;
use super::results::{Plan, plan_request};

/// A batch reports at most this many validation errors.
const MAX_REPORTED_ERRORS: usize = 100;
const MESSAGE_ROLES: [&str; 4] = ["system", "user", "assistant", "developer"];
/// Structured outputs in strict mode: levels of nesting and object properties in total.
const MAX_STRICT_NESTING: usize = 10;
const MAX_STRICT_PROPERTIES: usize = 5000;
const REASONING_MODEL_PREFIXES: [&str; 4] = ["o1", "o3", "o4", "gpt-5"];

/// One entry of a failed batch's `errors.data`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct LineError {
    pub(super) code: &'static str,
    pub(super) message: String,
    pub(super) param: Option<&'static str>,
    pub(super) line: Option<usize>,
}

impl LineError {
    pub(super) fn at(
        line: usize,
        code: &'static str,
        param: Option<&'static str>,
        message: String,
    ) -> Self {
        Self {
            code,
            message,
            param,
            line: Some(line),
        }
    }

    pub(super) fn whole_file(code: &'static str, message: String) -> Self {
        Self {
            code,
            message,
            param: None,
            line: None,
        }
    }
}

pub(super) struct InputLimits {
    pub(super) max_requests: usize,
    pub(super) max_bytes: usize,
}

/// Checks the whole input file and plans every request's answer. A valid file is
/// first put to `admit` (the enqueued-token quota), with its model and lines: its
/// error fails the batch before any request runs.
pub(super) fn plan_batch(
    content: &[u8],
    endpoint: Endpoint,
    limits: &InputLimits,
    fate: BatchFate,
    shared: &Shared,
    batch_id: &str,
    admit: impl FnOnce(&str, &[InputLine]) -> Result<(), LineError>,
) -> Result<Plan, Vec<LineError>> {
    if content.len() > limits.max_bytes {
        return Err(vec![LineError::whole_file(
            "file_too_large",
            format!(
                "The input file is larger than the {} byte limit for a batch.",
                limits.max_bytes
            ),
        )]);
    }
    let lines: Vec<(usize, &[u8])> = content
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(index, line)| (index + 1, line))
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .collect();
    if lines.is_empty() {
        return Err(vec![LineError::whole_file(
            "empty_file",
            "The batch input file is empty.".to_string(),
        )]);
    }
    if lines.len() > limits.max_requests {
        return Err(vec![LineError::whole_file(
            "too_many_tasks",
            format!(
                "The batch input file contains {} requests, more than the maximum of {}.",
                lines.len(),
                limits.max_requests
            ),
        )]);
    }
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    let mut valid = Vec::with_capacity(lines.len());
    for (number, raw) in lines {
        match parse_line(raw, number, endpoint)
            .and_then(|line| check_across_lines(line, number, &mut seen, valid.first()))
        {
            Ok(line) => valid.push(line),
            Err(error) if errors.len() < MAX_REPORTED_ERRORS => errors.push(error),
            Err(_) => {}
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let model = valid
        .first()
        .map(|line| line.model.clone())
        .unwrap_or_default();
    // A failure of the input itself; the enqueued-token quota has its own fate (`admit`).
    if fate == BatchFate::FailValidation {
        return Err(vec![LineError::whole_file(
            "invalid_request",
            format!("The batch input file for {model} failed validation (emulated)."),
        )]);
    }
    admit(&model, &valid).map_err(|error| vec![error])?;
    let requests = shared.run_in_results_order(batch_id, valid.len(), |index, cache| {
        plan_request(&valid[index], endpoint, fate, cache)
    });
    Ok(Plan { model, requests })
}

/// Rules that span lines: unique custom ids and one model for the whole file.
fn check_across_lines(
    line: InputLine,
    number: usize,
    seen: &mut HashSet<String>,
    first: Option<&InputLine>,
) -> Result<InputLine, LineError> {
    if !seen.insert(line.custom_id.clone()) {
        return Err(LineError::at(
            number,
            "duplicate_custom_id",
            Some("custom_id"),
            format!(
                "The custom_id '{}' is used more than once in the input file.",
                line.custom_id
            ),
        ));
    }
    match first {
        Some(first) if first.model != line.model => Err(LineError::at(
            number,
            "model_mismatch",
            Some("body.model"),
            format!(
                "Model '{}' differs from '{}' used earlier in the file. Every request in a batch must use the same model.",
                line.model, first.model
            ),
        )),
        _ => Ok(line),
    }
}

/// A line that passed the file-level checks.
pub(super) struct InputLine {
    pub(super) custom_id: String,
    pub(super) model: String,
    pub(super) body: Map<String, Value>,
}

fn parse_line(raw: &[u8], number: usize, endpoint: Endpoint) -> Result<InputLine, LineError> {
    let invalid_json = || {
        LineError::at(
            number,
            "invalid_json_line",
            None,
            format!("This line is not parseable as valid JSON (line {number})."),
        )
    };
    let Value::Object(mut line) = serde_json::from_slice(raw).map_err(|_| invalid_json())? else {
        return Err(invalid_json());
    };
    let missing = |param: &'static str| {
        LineError::at(
            number,
            "missing_required_parameter",
            Some(param),
            format!("Missing required parameter: '{param}'."),
        )
    };
    let custom_id = match line.remove("custom_id") {
        Some(Value::String(id)) => id,
        _ => return Err(missing("custom_id")),
    };
    if line.get("method").and_then(Value::as_str) != Some("POST") {
        return Err(LineError::at(
            number,
            "invalid_method",
            Some("method"),
            "The method of every request must be 'POST'.".to_string(),
        ));
    }
    if line.get("url").and_then(Value::as_str) != Some(endpoint.as_str()) {
        return Err(LineError::at(
            number,
            "url_mismatch",
            Some("url"),
            format!(
                "The url of this request does not match the batch endpoint '{}'.",
                endpoint.as_str()
            ),
        ));
    }
    let Some(Value::Object(body)) = line.remove("body") else {
        return Err(missing("body"));
    };
    let Some(model) = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return Err(missing("body.model"));
    };
    Ok(InputLine {
        custom_id,
        model,
        body,
    })
}

/// A request body the API would answer with a 400.
#[derive(Debug, PartialEq)]
pub(super) struct BodyError {
    pub(super) message: String,
    pub(super) param: Option<String>,
    pub(super) code: Option<&'static str>,
}

impl BodyError {
    pub(super) fn new(
        code: &'static str,
        param: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            message: message.into(),
            param: Some(param.into()),
            code: Some(code),
        }
    }
}

pub(super) fn check_body(body: &Map<String, Value>, model: &str) -> Result<(), BodyError> {
    let Some(messages) = body.get("messages").and_then(Value::as_array) else {
        return Err(BodyError::new(
            "missing_required_parameter",
            "messages",
            "Missing required parameter: 'messages'.",
        ));
    };
    if messages.is_empty() {
        return Err(BodyError::new(
            "empty_array",
            "messages",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        ));
    }
    for (index, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        if !MESSAGE_ROLES.contains(&role) {
            return Err(BodyError::new(
                "invalid_value",
                format!("messages[{index}].role"),
                format!(
                    "Invalid value: '{role}'. Supported values are: 'system', 'assistant', 'user' and 'developer'."
                ),
            ));
        }
    }
    if let Some(format) = body.get("response_format") {
        check_response_format(format)?;
    }
    if REASONING_MODEL_PREFIXES
        .iter()
        .any(|p| model.starts_with(p))
    {
        if let Some(temperature) = body.get("temperature").and_then(Value::as_f64)
            && temperature != 1.0
        {
            return Err(BodyError::new(
                "unsupported_value",
                "temperature",
                format!(
                    "Unsupported value: 'temperature' does not support {temperature} with this model. Only the default (1) value is supported."
                ),
            ));
        }
        if body.get("max_tokens").is_some_and(|v| !v.is_null()) {
            return Err(BodyError::new(
                "unsupported_parameter",
                "max_tokens",
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
            ));
        }
    }
    Ok(())
}

pub(super) fn check_response_format(format: &Value) -> Result<(), BodyError> {
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return Ok(());
    }
    let Some(spec) = format.get("json_schema") else {
        return Err(BodyError::new(
            "missing_required_parameter",
            "response_format.json_schema",
            "Missing required parameter: 'response_format.json_schema'.",
        ));
    };
    let name = spec.get("name").and_then(Value::as_str).unwrap_or("");
    if !is_identifier(name) {
        return Err(BodyError::new(
            "invalid_value",
            "response_format.json_schema.name",
            "Invalid 'response_format.json_schema.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]{1,64}$'.",
        ));
    }
    if spec.get("strict").and_then(Value::as_bool) == Some(true) {
        let schema = spec.get("schema").unwrap_or(&Value::Null);
        if let Some(problem) =
            strict_violation(schema, &mut Vec::new()).or_else(|| size_violation(schema))
        {
            return Err(BodyError::new(
                "invalid_json_schema",
                "response_format",
                format!("Invalid schema for response_format '{name}': {problem}"),
            ));
        }
    }
    Ok(())
}

/// The first strict-mode rule `schema` breaks: every object needs
/// `additionalProperties: false` and `required` listing every property.
pub(super) fn strict_violation(schema: &Value, context: &mut Vec<String>) -> Option<String> {
    let Value::Object(node) = schema else {
        return None;
    };
    let describe = |context: &[String], rule: String| {
        let path = context
            .iter()
            .map(|part| format!("'{part}'"))
            .collect::<Vec<_>>()
            .join(", ");
        format!("In context=({path}), {rule}")
    };
    let is_object = match node.get("type") {
        Some(Value::String(ty)) => ty == "object",
        Some(Value::Array(types)) => types.iter().any(|t| t == "object"),
        _ => node.contains_key("properties"),
    };
    if is_object {
        if node.get("additionalProperties") != Some(&Value::Bool(false)) {
            return Some(describe(
                context,
                "'additionalProperties' is required to be supplied and to be false.".to_string(),
            ));
        }
        let required: HashSet<&str> = node
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(properties) = node.get("properties").and_then(Value::as_object)
            && let Some(missing) = properties.keys().find(|k| !required.contains(k.as_str()))
        {
            return Some(describe(
                context,
                format!(
                    "'required' is required to be supplied and to be an array including every key in properties. Missing '{missing}'."
                ),
            ));
        }
    }
    for keyword in ["properties", "$defs", "definitions"] {
        if let Some(children) = node.get(keyword).and_then(Value::as_object) {
            for (name, child) in children {
                context.extend([keyword.to_string(), name.clone()]);
                let found = strict_violation(child, context);
                context.truncate(context.len() - 2);
                if found.is_some() {
                    return found;
                }
            }
        }
    }
    for keyword in ["items", "anyOf", "oneOf", "allOf", "prefixItems"] {
        let children: Vec<&Value> = match node.get(keyword) {
            Some(Value::Array(list)) => list.iter().collect(),
            Some(child @ Value::Object(_)) => vec![child],
            _ => continue,
        };
        for (index, child) in children.into_iter().enumerate() {
            context.extend([keyword.to_string(), index.to_string()]);
            let found = strict_violation(child, context);
            context.truncate(context.len() - 2);
            if found.is_some() {
                return found;
            }
        }
    }
    None
}

/// How deep and how large a strict schema is.
#[derive(Debug, Default)]
pub(super) struct SchemaSize {
    /// The deepest subschema's nesting level (the root is at 0).
    depth: usize,
    /// Object properties, summed over the whole schema.
    pub(super) properties: usize,
}

impl SchemaSize {
    /// Measures `schema` at `depth`. Every step into a subschema (a property, `items`,
    /// a union branch, a definition) is one level of nesting, as OpenAI's SDKs count it;
    /// a `$ref` is not followed, so recursive schemas have a finite depth.
    fn measure(&mut self, schema: &Value, depth: usize) {
        let Value::Object(node) = schema else {
            return;
        };
        self.depth = self.depth.max(depth);
        for keyword in ["properties", "$defs", "definitions"] {
            if let Some(children) = node.get(keyword).and_then(Value::as_object) {
                if keyword == "properties" {
                    self.properties += children.len();
                }
                for child in children.values() {
                    self.measure(child, depth + 1);
                }
            }
        }
        for keyword in ["items", "anyOf", "oneOf", "allOf", "prefixItems"] {
            match node.get(keyword) {
                Some(Value::Array(list)) => list.iter().for_each(|c| self.measure(c, depth + 1)),
                Some(child) => self.measure(child, depth + 1),
                None => {}
            }
        }
    }
}

/// The size limits of structured outputs a strict schema breaks (OpenAI, "Supported
/// schemas": up to 5000 object properties in total, up to 10 levels of nesting).
pub(super) fn size_violation(schema: &Value) -> Option<String> {
    let mut size = SchemaSize::default();
    size.measure(schema, 0);
    if size.depth > MAX_STRICT_NESTING {
        return Some(format!(
            "{} levels of nesting exceeds limit of {MAX_STRICT_NESTING}.",
            size.depth
        ));
    }
    (size.properties > MAX_STRICT_PROPERTIES).then(|| {
        format!(
            "{} object properties in total exceeds limit of {MAX_STRICT_PROPERTIES}.",
            size.properties
        )
    })
}
