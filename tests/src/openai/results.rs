//! What each request of an OpenAI batch answers, and the output and error file lines.

use std::collections::HashMap;

use axum::body::Bytes;
use serde_json::{Value, json};

use crate::cache::CacheState;
use crate::common::{BatchFate, new_id};
use crate::model::{Api, Failure, Usage, run_request};

use super::batches::NotRun;
use super::endpoints::{Endpoint, embed};
use super::files::StoredFile;
use super::validation::{BodyError, InputLine, check_body};

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
    /// The endpoint's answer (a `chat.completion`, a `response`, an embeddings list or
    /// a `text_completion`), or `{"error": {...}}` for a non-200 answer.
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

/// The answer a valid line gets when it runs (or the error it gets): the model is
/// checked first, then the body against `endpoint`, then the emulated model runs.
pub(super) fn plan_request(
    line: &InputLine,
    endpoint: Endpoint,
    fate: BatchFate,
    cache: &mut CacheState,
) -> PlannedRequest {
    let planned = |status_code: u16, body: Value, usage: Usage| PlannedRequest {
        custom_id: line.custom_id.clone(),
        status_code,
        body,
        usage,
    };
    let error = |status_code: u16, problem: BodyError, kind: &str| {
        let body = json!({"error": {
            "message": problem.message, "type": kind, "param": problem.param, "code": problem.code,
        }});
        planned(status_code, body, Usage::default())
    };
    let server_error = || {
        let problem = BodyError {
            message: "The server had an error while processing your request. Sorry about that!"
                .to_string(),
            param: None,
            code: None,
        };
        error(500, problem, "server_error")
    };
    if fate == BatchFate::AllFail {
        return server_error();
    }
    let checked = endpoint.check_model(&line.model).and_then(|dimensions| {
        let chat = endpoint.chat_body(&line.body).map_err(|e| (400, e))?;
        if let Some(chat) = &chat {
            let body = chat.as_object().expect("a chat body is an object");
            check_body(body, &line.model).map_err(|e| (400, e))?;
        }
        Ok((dimensions, chat))
    });
    let chat = match checked {
        Err((status, problem)) => return error(status, problem, "invalid_request_error"),
        Ok((Some(dimensions), _)) => {
            return match embed(&line.model, dimensions, &line.body) {
                Ok((answer, usage)) => planned(200, answer, usage),
                Err(problem) => error(400, problem, "invalid_request_error"),
            };
        }
        Ok((None, chat)) => chat.expect("every endpoint but embeddings runs a chat body"),
    };
    let reply = run_request(Api::OpenAi, &line.model, &chat, cache);
    match reply.outcome {
        Err(Failure::ContextLength { tokens, limit }) => error(
            400,
            BodyError::new(
                "context_length_exceeded",
                "messages",
                format!(
                    "This model's maximum context length is {limit} tokens. However, your messages resulted in {tokens} tokens. Please reduce the length of the messages."
                ),
            ),
            "invalid_request_error",
        ),
        Err(Failure::RateLimit) => error(
            429,
            BodyError {
                message: "Rate limit reached for requests. Please try again later.".to_string(),
                param: None,
                code: Some("rate_limit_exceeded"),
            },
            "requests",
        ),
        Err(Failure::Server) => server_error(),
        Ok(output) => planned(
            200,
            endpoint.answer(&line.model, output, &reply.usage),
            reply.usage,
        ),
    }
}
