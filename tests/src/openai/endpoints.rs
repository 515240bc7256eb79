//! The endpoints a batch runs its requests against, what each one's request body must
//! hold, and the answer body each returns. Chat Completions, Responses and legacy
//! Completions bodies run through the emulated model as a chat request
//! ([`Endpoint::chat_body`]); embeddings are computed here.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::catalogue::{OpenAiKind, openai_model};
use crate::common::{content_text, new_id, unix_now};
use crate::model::{Finish, Output, Usage, count_tokens};

use super::validation::{BodyError, check_response_format};

/// Every endpoint the Batch API takes (openai-python 3.57.0, `BatchCreateParams.endpoint`).
const API_ENDPOINTS: [&str; 8] = [
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
];
/// The legacy Completions API's default `max_tokens`.
const COMPLETIONS_DEFAULT_MAX_TOKENS: u64 = 16;

/// An endpoint the emulator runs batches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    ChatCompletions,
    Responses,
    Embeddings,
    Completions,
}

/// Why a batch's `endpoint` is refused.
pub(super) enum EndpointRefusal {
    /// Not an endpoint of the Batch API at all.
    Unknown,
    /// One the API takes but the emulator does not run (images, videos, moderations).
    NotEmulated,
}

impl Endpoint {
    pub(super) fn parse(text: &str) -> Result<Self, EndpointRefusal> {
        match text {
            "/v1/chat/completions" => Ok(Self::ChatCompletions),
            "/v1/responses" => Ok(Self::Responses),
            "/v1/embeddings" => Ok(Self::Embeddings),
            "/v1/completions" => Ok(Self::Completions),
            other if API_ENDPOINTS.contains(&other) => Err(EndpointRefusal::NotEmulated),
            _ => Err(EndpointRefusal::Unknown),
        }
    }

    /// The API's wording of the supported values, for the refusal of any other.
    pub(super) fn supported_values() -> String {
        let quoted: Vec<String> = API_ENDPOINTS.iter().map(|e| format!("'{e}'")).collect();
        let (last, rest) = quoted.split_last().expect("a non-empty list");
        format!("{}, and {last}", rest.join(", "))
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Responses => "/v1/responses",
            Self::Embeddings => "/v1/embeddings",
            Self::Completions => "/v1/completions",
        }
    }

    /// The model check every request makes first: an unknown model is 404
    /// `model_not_found`; a known one of the wrong family for this endpoint is 404 too,
    /// with the API's hint (`code` null). Answers an embedding model's vector length.
    pub(super) fn check_model(self, model: &str) -> Result<Option<usize>, (u16, BodyError)> {
        let Some(kind) = openai_model(model) else {
            return Err((
                404,
                BodyError {
                    message: format!(
                        "The model `{model}` does not exist or you do not have access to it."
                    ),
                    param: None,
                    code: Some("model_not_found"),
                },
            ));
        };
        let wrong = |message: &str| {
            Err((
                404,
                BodyError {
                    message: message.to_string(),
                    param: Some("model".to_string()),
                    code: None,
                },
            ))
        };
        match (self, kind) {
            (Self::ChatCompletions, OpenAiKind::Chat)
            | (Self::Responses, OpenAiKind::Chat | OpenAiKind::ResponsesOnly)
            | (Self::Completions, OpenAiKind::Completion) => Ok(None),
            (Self::Embeddings, OpenAiKind::Embedding(dimensions)) => Ok(Some(dimensions)),
            (Self::ChatCompletions, OpenAiKind::ResponsesOnly) => wrong(
                "This model is only supported in v1/responses and not in v1/chat/completions.",
            ),
            (Self::ChatCompletions, _) => wrong(
                "This is not a chat model and thus not supported in the v1/chat/completions endpoint. Did you mean to use v1/completions?",
            ),
            (Self::Completions, _) => wrong(
                "This is a chat model and not supported in the v1/completions endpoint. Did you mean to use v1/chat/completions?",
            ),
            (Self::Responses | Self::Embeddings, _) => wrong(&format!(
                "The model `{model}` is not supported by the {} endpoint.",
                self.as_str().trim_start_matches('/')
            )),
        }
    }

    /// The request as the chat body the emulated model runs, after this endpoint's
    /// own checks (`None` for embeddings, which run no model).
    pub(super) fn chat_body(self, body: &Map<String, Value>) -> Result<Option<Value>, BodyError> {
        match self {
            Self::ChatCompletions => Ok(Some(Value::Object(body.clone()))),
            Self::Responses => responses_as_chat(body).map(Some),
            Self::Completions => completions_as_chat(body).map(Some),
            Self::Embeddings => embedding_inputs(body).map(|_| None),
        }
    }

    /// The 200 answer body of this endpoint for `output`.
    pub(super) fn answer(self, model: &str, output: Output, usage: &Usage) -> Value {
        match self {
            Self::ChatCompletions => {
                let (content, refusal) = match output.finish {
                    Finish::Refusal => (None, Some(output.text)),
                    _ => (Some(output.text), None),
                };
                json!({
                    "id": new_id("chatcmpl-"),
                    "object": "chat.completion",
                    "created": unix_now(),
                    "model": model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": refusal},
                        "logprobs": null,
                        "finish_reason": finish_reason(output.finish),
                    }],
                    "usage": usage.to_provider_json(crate::model::Api::OpenAi),
                })
            }
            Self::Responses => response_object(model, output, usage),
            Self::Completions => json!({
                "id": new_id("cmpl-"),
                "object": "text_completion",
                "created": unix_now(),
                "model": model,
                "choices": [{
                    "text": output.text,
                    "index": 0,
                    "logprobs": null,
                    "finish_reason": finish_reason(output.finish),
                }],
                "usage": {
                    "prompt_tokens": usage.prompt(),
                    "completion_tokens": usage.output,
                    "total_tokens": usage.prompt() + usage.output,
                },
            }),
            Self::Embeddings => unreachable!("embeddings are answered by `embed`"),
        }
    }
}

fn finish_reason(finish: Finish) -> &'static str {
    match finish {
        Finish::Length => "length",
        Finish::Stop | Finish::Refusal => "stop",
    }
}

fn missing(param: &str) -> BodyError {
    BodyError::new(
        "missing_required_parameter",
        param,
        format!("Missing required parameter: '{param}'."),
    )
}

fn invalid_type(param: &str, expected: &str) -> BodyError {
    BodyError::new(
        "invalid_type",
        param,
        format!("Invalid type for '{param}': expected {expected}."),
    )
}

/// A Responses body as chat: `instructions` as the developer message, `input` (a string
/// or a list of messages) as the messages, `text.format` as `response_format`,
/// `max_output_tokens` as `max_completion_tokens`.
fn responses_as_chat(body: &Map<String, Value>) -> Result<Value, BodyError> {
    let mut messages = Vec::new();
    match body.get("instructions") {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => messages.push(json!({"role": "developer", "content": text})),
        Some(_) => return Err(invalid_type("instructions", "a string")),
    }
    match body.get("input") {
        None => return Err(missing("input")),
        Some(Value::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) if !items.is_empty() => {
            for (index, item) in items.iter().enumerate() {
                let role = item.get("role").and_then(Value::as_str);
                let Some(role @ ("user" | "assistant" | "system" | "developer")) = role else {
                    return Err(BodyError::new(
                        "invalid_value",
                        format!("input[{index}].role"),
                        "Invalid value. Supported values are: 'user', 'assistant', 'system' and 'developer'.",
                    ));
                };
                let content = item.get("content").unwrap_or(&Value::Null);
                messages.push(json!({"role": role, "content": content_text(content)}));
            }
        }
        Some(Value::Array(_)) => {
            return Err(BodyError::new(
                "empty_array",
                "input",
                "Invalid 'input': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            ));
        }
        Some(_) => return Err(invalid_type("input", "a string or an array of input items")),
    }
    let mut chat = Map::new();
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(format) = body.get("text").and_then(|text| text.get("format")) {
        // `text.format` is `response_format` with the `json_schema` fields one level up.
        let response_format = match format.get("type").and_then(Value::as_str) {
            Some("json_schema") => {
                let mut spec = format.as_object().cloned().unwrap_or_default();
                spec.remove("type");
                json!({"type": "json_schema", "json_schema": spec})
            }
            _ => format.clone(),
        };
        check_response_format(&response_format).map_err(|problem| BodyError {
            param: Some("text.format".to_string()),
            ..problem
        })?;
        chat.insert("response_format".into(), response_format);
    }
    for (from, to) in [
        ("max_output_tokens", "max_completion_tokens"),
        ("temperature", "temperature"),
    ] {
        if let Some(value) = body.get(from) {
            chat.insert(to.into(), value.clone());
        }
    }
    Ok(Value::Object(chat))
}

/// A legacy Completions body as chat: `prompt` (a string, or a list of strings read as
/// one text) as the user message, `max_tokens` defaulting to 16 as the API's does.
fn completions_as_chat(body: &Map<String, Value>) -> Result<Value, BodyError> {
    let prompt = match body.get("prompt") {
        None => return Err(missing("prompt")),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) if parts.iter().all(Value::is_string) => parts
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        Some(_) => return Err(invalid_type("prompt", "a string or an array of strings")),
    };
    let max_tokens = body
        .get("max_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(COMPLETIONS_DEFAULT_MAX_TOKENS);
    Ok(json!({
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
    }))
}

/// The texts of an embeddings body's `input`: a non-empty string or a non-empty list of
/// non-empty strings (token arrays are taken too, as their decimal text).
pub(super) fn embedding_inputs(body: &Map<String, Value>) -> Result<Vec<String>, BodyError> {
    let invalid = || {
        BodyError::new(
            "invalid_value",
            "input",
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
        )
    };
    let texts: Vec<String> = match body.get("input") {
        None => return Err(missing("input")),
        Some(Value::String(text)) => vec![text.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(text) => Some(text.clone()),
                Value::Number(token) => Some(token.to_string()),
                Value::Array(tokens) => Some(
                    tokens
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join(" "),
                ),
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(invalid)?,
        Some(_) => return Err(invalid()),
    };
    if texts.is_empty() || texts.iter().any(String::is_empty) {
        return Err(invalid());
    }
    Ok(texts)
}

/// The embeddings answer for `body` (already checked by [`embedding_inputs`]): one unit
/// vector per input, the same for the same text, `dimensions` long when asked for
/// (text-embedding-3 models only, at most their default length), as floats or, with
/// `encoding_format: "base64"`, as base64 of little-endian `f32`s.
pub(super) fn embed(
    model: &str,
    default_dimensions: usize,
    body: &Map<String, Value>,
) -> Result<(Value, Usage), BodyError> {
    let texts = embedding_inputs(body)?;
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => default_dimensions,
        Some(asked) => {
            let asked = asked.as_u64().unwrap_or(0) as usize;
            if !model.starts_with("text-embedding-3") {
                return Err(BodyError::new(
                    "invalid_value",
                    "dimensions",
                    "This model does not support specifying dimensions.",
                ));
            }
            if !(1..=default_dimensions).contains(&asked) {
                return Err(BodyError::new(
                    "invalid_value",
                    "dimensions",
                    format!(
                        "Invalid value for 'dimensions' = {asked}. Must be between 1 and {default_dimensions}."
                    ),
                ));
            }
            asked
        }
    };
    let base64 = match body.get("encoding_format").and_then(Value::as_str) {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(BodyError::new(
                "invalid_value",
                "encoding_format",
                format!("Invalid value: '{other}'. Supported values are: 'float' and 'base64'."),
            ));
        }
    };
    let mut tokens = 0;
    let data: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(index, text)| {
            tokens += count_tokens(text);
            let vector = unit_vector(text, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let usage = Usage {
        input: tokens,
        ..Usage::default()
    };
    let answer = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Ok((answer, usage))
}

/// A vector of length one drawn from the text's SHA-256, so equal texts embed equally.
fn unit_vector(text: &str, dimensions: usize) -> Vec<f32> {
    let mut raw = Vec::with_capacity(dimensions);
    let mut block = 0u32;
    while raw.len() < dimensions {
        let digest = Sha256::new()
            .chain_update(text.as_bytes())
            .chain_update(block.to_le_bytes())
            .finalize();
        raw.extend(
            digest
                .iter()
                .map(|byte| f32::from(*byte) / 127.5 - 1.0)
                .take(dimensions - raw.len()),
        );
        block += 1;
    }
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    raw.iter().map(|x| x / norm).collect()
}

/// A Responses API `response` object holding one assistant message (a refusal is a
/// `refusal` content part, a cut answer an `incomplete` response).
fn response_object(model: &str, output: Output, usage: &Usage) -> Value {
    let content = match output.finish {
        Finish::Refusal => json!({"type": "refusal", "refusal": output.text}),
        _ => json!({"type": "output_text", "text": output.text, "annotations": []}),
    };
    let cut = output.finish == Finish::Length;
    json!({
        "id": new_id("resp_"),
        "object": "response",
        "created_at": unix_now(),
        "status": if cut { "incomplete" } else { "completed" },
        "incomplete_details": if cut { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "error": null,
        "model": model,
        "output": [{
            "type": "message",
            "id": new_id("msg_"),
            "status": if cut { "incomplete" } else { "completed" },
            "role": "assistant",
            "content": [content],
        }],
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": usage.prompt(),
            // OpenAI writes its cache without charging for it: no cache writes to count.
            "input_tokens_details": {"cached_tokens": usage.cache_read, "cache_write_tokens": 0},
            "output_tokens": usage.output,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.prompt() + usage.output,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("an object")
    }

    #[test]
    fn unknown_models_are_not_found_and_wrong_families_say_where_to_go() {
        let (status, error) = Endpoint::ChatCompletions.check_model("gpt-3").unwrap_err();
        assert_eq!((status, error.code), (404, Some("model_not_found")));
        assert_eq!(
            error.message,
            "The model `gpt-3` does not exist or you do not have access to it."
        );
        let (status, error) = Endpoint::Completions.check_model("gpt-4o").unwrap_err();
        assert_eq!((status, error.code), (404, None));
        assert!(error.message.contains("v1/chat/completions"));
        assert_eq!(
            Endpoint::Embeddings
                .check_model("text-embedding-3-small")
                .unwrap(),
            Some(1536)
        );
        assert!(Endpoint::Responses.check_model("gpt-5-pro").is_ok());
        assert!(Endpoint::ChatCompletions.check_model("gpt-5-pro").is_err());
    }

    #[test]
    fn endpoints_of_the_api_the_emulator_does_not_run_are_told_apart_from_unknown_ones() {
        assert!(matches!(
            Endpoint::parse("/v1/moderations"),
            Err(EndpointRefusal::NotEmulated)
        ));
        assert!(matches!(
            Endpoint::parse("/v1/chat"),
            Err(EndpointRefusal::Unknown)
        ));
        assert!(Endpoint::supported_values().ends_with(", and '/v1/videos'"));
    }

    #[test]
    fn responses_bodies_become_chat_with_their_format_checked() {
        let chat = responses_as_chat(&body(json!({
            "model": "gpt-4o", "instructions": "Be brief.", "input": "hello",
            "text": {"format": {"type": "json_schema", "name": "x", "strict": true,
                "schema": {"type": "object", "properties": {"a": {"type": "string"}},
                    "required": ["a"], "additionalProperties": false}}},
            "max_output_tokens": 20,
        })))
        .unwrap();
        assert_eq!(chat["messages"][0]["role"], "developer");
        assert_eq!(chat["messages"][1]["content"], "hello");
        assert_eq!(chat["response_format"]["json_schema"]["name"], "x");
        assert_eq!(chat["max_completion_tokens"], 20);
        let loose = responses_as_chat(&body(json!({
            "input": "x", "text": {"format": {"type": "json_schema", "name": "x", "strict": true,
                "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}},
        })));
        assert_eq!(loose.unwrap_err().code, Some("invalid_json_schema"));
        assert_eq!(
            responses_as_chat(&body(json!({"model": "gpt-4o"})))
                .unwrap_err()
                .code,
            Some("missing_required_parameter")
        );
    }

    #[test]
    fn embeddings_are_unit_vectors_that_repeat_for_equal_texts() {
        let request = body(json!({"input": ["a cat", "a dog", "a cat"], "dimensions": 8}));
        let (answer, usage) = embed("text-embedding-3-small", 1536, &request).unwrap();
        let vectors: Vec<Vec<f64>> = answer["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| serde_json::from_value(d["embedding"].clone()).unwrap())
            .collect();
        assert_eq!(vectors.len(), 3);
        assert!(vectors.iter().all(|v| v.len() == 8));
        let norm: f64 = vectors[0].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "unit length, got {norm}");
        assert_eq!(vectors[0], vectors[2]);
        assert_ne!(vectors[0], vectors[1]);
        assert_eq!(answer["usage"]["prompt_tokens"], usage.input);
        let too_long = body(json!({"input": "x", "dimensions": 2000}));
        assert!(embed("text-embedding-3-small", 1536, &too_long).is_err());
        let ada = body(json!({"input": "x", "dimensions": 8}));
        assert!(embed("text-embedding-ada-002", 1536, &ada).is_err());
        assert!(embedding_inputs(&body(json!({"input": ["ok", ""]}))).is_err());
    }
}
