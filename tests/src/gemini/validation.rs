//! Gemini batch input checks: the input config of a create call and the lines of an input file.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::google::{GoogleError, field};
use crate::model::{Api, prompt_tokens};

use super::Gemini;
use super::batches::{Batch, Input, Tag};

/// Exactly one of `fileName` (an uploaded file) and `requests.requests` (inline).
pub(super) fn parse_input(gemini: &Gemini, config: &Value) -> Result<(Input, usize), GoogleError> {
    let file_name = field(config, "fileName").and_then(Value::as_str);
    let inline = field(config, "requests").and_then(|requests| field(requests, "requests"));
    match (file_name, inline) {
        (Some(name), None) => {
            let id = name.strip_prefix("files/").unwrap_or(name);
            let file = gemini.file(id)?;
            if file.generated {
                return Err(GoogleError::invalid(format!(
                    "{name} holds results; a batch reads an uploaded file."
                )));
            }
            let count = file
                .data
                .split(|b| *b == b'\n')
                .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
                .count();
            Ok((Input::File(file.id), count))
        }
        (None, Some(requests)) => {
            let requests = requests
                .as_array()
                .filter(|requests| !requests.is_empty())
                .ok_or_else(|| {
                    GoogleError::invalid(
                        "* InputConfig.requests.requests: at least one request is required",
                    )
                })?;
            let mut inline = Vec::with_capacity(requests.len());
            for (i, item) in requests.iter().enumerate() {
                let request = item
                    .get("request")
                    .filter(|r| r.is_object())
                    .ok_or_else(|| {
                        GoogleError::invalid(format!(
                            "* InlinedRequests.requests[{i}].request: request is required"
                        ))
                    })?;
                let metadata = item.get("metadata").cloned();
                if metadata.as_ref().is_some_and(|m| !m.is_object()) {
                    return Err(GoogleError::invalid(format!(
                        "* InlinedRequests.requests[{i}].metadata: must be an object"
                    )));
                }
                inline.push((metadata, request.clone()));
            }
            let count = inline.len();
            Ok((Input::Inline(inline), count))
        }
        _ => Err(GoogleError::invalid(
            "* GenerateContentBatch.input_config: exactly one of file_name and requests must be set",
        )),
    }
}

/// The prompt tokens of the requests of a create call's input (file lines that do not
/// parse hold none: they fail the batch when it runs).
pub(super) fn input_tokens(gemini: &Gemini, input: &Input) -> u64 {
    let tokens = |request: &Value| prompt_tokens(Api::Gemini, request);
    match input {
        Input::Inline(inline) => inline.iter().map(|(_, request)| tokens(request)).sum(),
        Input::File(file_id) => {
            let Ok(file) = gemini.file(file_id) else {
                return 0;
            };
            file.data
                .split(|b| *b == b'\n')
                .filter_map(|raw| serde_json::from_slice::<Value>(raw).ok())
                .filter_map(|line| line.get("request").map(tokens))
                .sum()
        }
    }
}

impl Batch {
    /// The requests in input order, each with what its result is reported under. A
    /// file line that is not JSON, lacks a key or a request, or repeats a key fails the
    /// whole batch.
    pub(super) fn requests(&self, gemini: &Gemini) -> Result<Vec<(Tag, Value)>, GoogleError> {
        let file_id = match &self.input {
            Input::Inline(inline) => {
                return Ok(inline
                    .iter()
                    .map(|(metadata, request)| (Tag::Metadata(metadata.clone()), request.clone()))
                    .collect());
            }
            Input::File(file_id) => file_id,
        };
        let data = gemini.file(file_id)?.data;
        let mut keys = HashSet::new();
        let mut requests = Vec::new();
        for (number, raw) in data.split(|b| *b == b'\n').enumerate() {
            if raw.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let bad_line = |why: &str| {
                GoogleError::invalid(format!("Line {} of files/{file_id}: {why}", number + 1))
            };
            let mut line: Map<String, Value> = serde_json::from_slice(raw)
                .map_err(|e| bad_line(&format!("not a JSON object ({e}).")))?;
            let key = match line.remove("key") {
                Some(Value::String(key)) if !key.is_empty() => key,
                _ => return Err(bad_line("\"key\" must be a non-empty string.")),
            };
            let request = line
                .remove("request")
                .filter(Value::is_object)
                .ok_or_else(|| bad_line("\"request\" must be an object."))?;
            if !keys.insert(key.clone()) {
                return Err(bad_line(&format!("the key {key:?} was already used.")));
            }
            requests.push((Tag::Key(key), request));
        }
        if requests.is_empty() {
            return Err(GoogleError::invalid(format!(
                "files/{file_id} holds no requests."
            )));
        }
        Ok(requests)
    }
}
