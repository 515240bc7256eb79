//! What each request of an OpenAI batch answers, and the output and error file lines.

use std::collections::HashMap;

use axum::body::Bytes;
use serde_json::{Value, json};

use crate::common::{
    BatchFate, RequestFault, answer_for, first_half, messages_text, new_id, schema_breaking_answer,
    tokens, unix_now,
};

use super::batches::NotRun;
use super::files::StoredFile;
use super::validation::{InputLine, check_body};

/// What each request of a valid input file will answer when it runs.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) model: String,
    pub(super) requests: Vec<PlannedRequest>,
}

#[derive(Debug)]
pub(super) struct PlannedRequest {
    pub(super) custom_id: String,
    pub(super) status_code: u16,
    /// A `chat.completion`, or `{"error": {...}}` for a non-200 answer.
    pub(super) body: Value,
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
}

pub(super) fn answered_line(request: &PlannedRequest) -> Value {
    json!({
        "id": new_id("batch_req_"),
        "custom_id": request.custom_id,
        "response": {
            "status_code": request.status_code,
            "request_id": new_id("req_"),
            "body": request.body,
        },
        "error": null,
    })
}

pub(super) fn not_run_line(custom_id: &str, not_run: NotRun) -> Value {
    let (code, message) = match not_run {
        NotRun::Expired => (
            "batch_expired",
            "This request could not be executed before the completion window expired.",
        ),
        NotRun::Cancelled => (
            "batch_cancelled",
            "This request could not be executed before the batch was cancelled.",
        ),
    };
    json!({
        "id": new_id("batch_req_"),
        "custom_id": custom_id,
        "response": null,
        "error": {"code": code, "message": message},
    })
}

/// Stores a non-empty results file and returns its id.
pub(super) fn store_result_file(
    files: &mut HashMap<String, StoredFile>,
    batch_id: &str,
    kind: &str,
    content: Bytes,
) -> Option<String> {
    if content.is_empty() {
        return None;
    }
    let file = StoredFile::new(format!("{batch_id}_{kind}.jsonl"), "batch_output", content);
    let id = file.id.clone();
    files.insert(id.clone(), file);
    Some(id)
}

/// The answer a valid line gets when it runs (or the error it gets).
pub(super) fn plan_request(line: &InputLine, fate: BatchFate) -> PlannedRequest {
    let error = |status_code: u16,
                 message: &str,
                 kind: &str,
                 param: Option<&str>,
                 code: Option<&str>| {
        PlannedRequest {
            custom_id: line.custom_id.clone(),
            status_code,
            body: json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
            input_tokens: 0,
            output_tokens: 0,
        }
    };
    let server_error = || {
        error(
            500,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        )
    };
    if fate == BatchFate::AllFail {
        return server_error();
    }
    if let Err(problem) = check_body(&line.body, &line.model) {
        return error(
            400,
            &problem.message,
            "invalid_request_error",
            Some(&problem.param),
            Some(problem.code),
        );
    }
    let messages = line
        .body
        .get("messages")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let text = messages_text(messages);
    let fault = RequestFault::find_in(&text);
    let schema = line
        .body
        .get("response_format")
        .and_then(|format| format.pointer("/json_schema/schema"))
        .cloned()
        .unwrap_or_else(|| json!({"type": "string"}));
    let seed = format!("{}{text}", line.custom_id);
    let serialized = |answer: Value| match answer {
        Value::String(text) => text,
        other => other.to_string(),
    };
    let (content, refusal, finish_reason) = match fault {
        Some(RequestFault::ProviderError) => {
            return error(
                400,
                "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens. Please reduce the length of the messages.",
                "invalid_request_error",
                Some("messages"),
                Some("context_length_exceeded"),
            );
        }
        Some(RequestFault::RateLimit) => {
            return error(
                429,
                "Rate limit reached for requests. Please try again later.",
                "requests",
                None,
                Some("rate_limit_exceeded"),
            );
        }
        Some(RequestFault::ServerError) => return server_error(),
        Some(RequestFault::NonJson) => (
            Some(format!(
                "Sure! Here is what I found: {}",
                serialized(answer_for(&schema, &seed))
            )),
            None,
            "stop",
        ),
        Some(RequestFault::SchemaBreak) => (
            Some(serialized(schema_breaking_answer(&schema, &seed))),
            None,
            "stop",
        ),
        Some(RequestFault::Refusal) => (
            None,
            Some("I'm sorry, but I can't help with that request.".to_string()),
            "stop",
        ),
        Some(RequestFault::Truncate) => {
            let full = serialized(answer_for(&schema, &seed));
            (Some(first_half(&full).to_string()), None, "length")
        }
        None => (Some(serialized(answer_for(&schema, &seed))), None, "stop"),
    };
    let input_tokens = tokens(&text);
    let output_tokens = tokens(content.as_deref().or(refusal.as_deref()).unwrap_or(""));
    PlannedRequest {
        custom_id: line.custom_id.clone(),
        status_code: 200,
        body: json!({
            "id": new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": unix_now(),
            "model": line.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "logprobs": null,
                "finish_reason": finish_reason,
            }],
            "usage": {
                "prompt_tokens": input_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            },
        }),
        input_tokens,
        output_tokens,
    }
}
