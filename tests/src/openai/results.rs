//! What each request of an OpenAI batch answers, and the output and error file lines.

use std::collections::HashMap;

use axum::body::Bytes;
use serde_json::{Value, json};

use crate::cache::CacheState;
use crate::common::{BatchFate, new_id, unix_now};
use crate::model::{Api, Failure, Finish, Usage, run_request};

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
    /// Tokens it used (zero for an error).
    pub(super) usage: Usage,
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
pub(super) fn plan_request(
    line: &InputLine,
    fate: BatchFate,
    cache: &mut CacheState,
) -> PlannedRequest {
    let error = |status_code: u16,
                 message: &str,
                 kind: &str,
                 param: Option<&str>,
                 code: Option<&str>| {
        PlannedRequest {
            custom_id: line.custom_id.clone(),
            status_code,
            body: json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
            usage: Usage::default(),
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
    let body = Value::Object(line.body.clone());
    let reply = run_request(Api::OpenAi, &line.model, &body, cache);
    let output = match reply.outcome {
        Err(Failure::ContextLength { tokens, limit }) => {
            return error(
                400,
                &format!(
                    "This model's maximum context length is {limit} tokens. However, your messages resulted in {tokens} tokens. Please reduce the length of the messages."
                ),
                "invalid_request_error",
                Some("messages"),
                Some("context_length_exceeded"),
            );
        }
        Err(Failure::RateLimit) => {
            return error(
                429,
                "Rate limit reached for requests. Please try again later.",
                "requests",
                None,
                Some("rate_limit_exceeded"),
            );
        }
        Err(Failure::Server) => return server_error(),
        Ok(output) => output,
    };
    let (content, refusal, finish_reason) = match output.finish {
        Finish::Refusal => (None, Some(output.text), "stop"),
        Finish::Length => (Some(output.text), None, "length"),
        Finish::Stop => (Some(output.text), None, "stop"),
    };
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
            "usage": reply.usage.to_provider_json(Api::OpenAi),
        }),
        usage: reply.usage,
    }
}
