//! Vertex AI batch prediction result-line decoding. Lines carry no key: the request
//! is found by the row number the encoder put in `request.labels.batchline_row`.
//! The `GenerateContentResponse` handling is shared with the Gemini API.

use std::borrow::Cow;

use serde::Deserialize;

use super::encode::ROW_LABEL;
use crate::results::{
    Answer, CodeText, Decoded, Malformed, Usage, error_type, lenient_count, optional_borrowed,
};

#[derive(Deserialize)]
struct Line<'a> {
    status: Option<LineStatus>,
    request: Option<EchoedRequest>,
    #[serde(borrow)]
    response: Option<GenerateContentResponse<'a>>,
}

/// `""` on success and an error string otherwise (exact form unconfirmed, so an
/// rpc `Status` object is accepted as well).
#[derive(Deserialize)]
#[serde(untagged)]
enum LineStatus {
    Text(String),
    Rpc {
        code: Option<CodeText>,
        message: Option<String>,
        status: Option<String>,
    },
}

impl LineStatus {
    /// The error text, or `None` when the status says the request succeeded.
    fn error_text(self) -> Option<String> {
        let text = match self {
            LineStatus::Text(text) => text,
            LineStatus::Rpc {
                code,
                message,
                status,
            } => [status, code.map(|c| c.0), message]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(": "),
        };
        (!text.trim().is_empty()).then_some(text)
    }
}

#[derive(Deserialize)]
struct EchoedRequest {
    labels: Option<Labels>,
}

#[derive(Deserialize)]
struct Labels {
    /// Named [`ROW_LABEL`] by the encoder.
    batchline_row: Option<String>,
}

/// Decodes one line of a Vertex `predictions.jsonl`; `row_ids` are the part's
/// custom_ids in input order.
pub fn decode<'a>(line: &'a [u8], row_ids: &'a [String]) -> Result<Decoded<'a>, Malformed> {
    let parsed: Line<'a> = serde_json::from_slice(line).map_err(|e| {
        Malformed::new(
            recover_custom_id(line, row_ids),
            format!("not a readable results line: {e}"),
        )
    })?;
    let custom_id = custom_id_of(parsed.request, row_ids)?;
    let (answer, usage) = match (
        parsed.status.and_then(LineStatus::error_text),
        parsed.response,
    ) {
        (Some(status), _) => (
            Answer::failed(classify_status(&status), status),
            Usage::default(),
        ),
        (None, Some(response)) => response_answer(response),
        (None, None) => {
            return Err(Malformed::new(
                Some(custom_id.to_string()),
                "the line has neither an error status nor a response",
            ));
        }
    };
    Ok(Decoded {
        custom_id: Cow::Borrowed(custom_id),
        usage,
        answer,
    })
}

fn custom_id_of(request: Option<EchoedRequest>, row_ids: &[String]) -> Result<&str, Malformed> {
    let row = request
        .and_then(|r| r.labels)
        .and_then(|l| l.batchline_row)
        .ok_or_else(|| {
            Malformed::new(
                None,
                format!(
                    "the echoed request has no labels.{ROW_LABEL}, so its custom_id is unknown"
                ),
            )
        })?;
    let index = row
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| row.parse::<usize>().ok())
        .flatten()
        .ok_or_else(|| {
            Malformed::new(
                None,
                format!("labels.{ROW_LABEL} {row:?} is not a row number"),
            )
        })?;
    row_ids.get(index).map(String::as_str).ok_or_else(|| {
        Malformed::new(
            None,
            format!(
                "labels.{ROW_LABEL} {index} is outside this part's {} requests",
                row_ids.len()
            ),
        )
    })
}

/// The custom_id of a line whose body did not parse, if its echoed request still names a row.
fn recover_custom_id(line: &[u8], row_ids: &[String]) -> Option<String> {
    #[derive(Deserialize)]
    struct RequestOnly {
        request: Option<EchoedRequest>,
    }
    let only: RequestOnly = serde_json::from_slice(line).ok()?;
    custom_id_of(only.request, row_ids).ok().map(str::to_string)
}

/// Google reports throttling as `RESOURCE_EXHAUSTED` or HTTP 429; everything else
/// keeps the provider's text under a generic type.
fn classify_status(status: &str) -> &'static str {
    let throttled = status
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|word| word == "RESOURCE_EXHAUSTED" || word == "429");
    if throttled {
        error_type::RATE_LIMIT
    } else {
        error_type::PROVIDER_ERROR
    }
}

// ---------------------------------------------------------------------------------
// GenerateContentResponse, shared with the Gemini API.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GenerateContentResponse<'a> {
    #[serde(borrow, default)]
    candidates: Vec<Candidate<'a>>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<UsageMetadata>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(borrow)]
    content: Option<Content<'a>>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    parts: Vec<Part<'a>>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default, deserialize_with = "optional_borrowed")]
    text: Option<Cow<'a, str>>,
    /// Thinking models return their thoughts as parts too; they are not the answer.
    #[serde(default)]
    thought: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    block_reason: Option<String>,
    block_reason_message: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default, deserialize_with = "lenient_count")]
    prompt_token_count: u64,
    #[serde(default, deserialize_with = "lenient_count")]
    candidates_token_count: u64,
    /// Billed as output, but not part of `candidatesTokenCount`.
    #[serde(default, deserialize_with = "lenient_count")]
    thoughts_token_count: u64,
}

/// Finish reasons that mean a safety or policy system withheld the answer.
const REFUSAL_FINISH_REASONS: [&str; 8] = [
    "SAFETY",
    "RECITATION",
    "BLOCKLIST",
    "PROHIBITED_CONTENT",
    "SPII",
    "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT",
    "IMAGE_RECITATION",
];

/// The answer text of a response (its first candidate's non-thought parts joined),
/// or why there is none.
pub(crate) fn response_answer(response: GenerateContentResponse<'_>) -> (Answer<'_>, Usage) {
    let usage = response
        .usage_metadata
        .map_or_else(Usage::default, |u| Usage {
            input_tokens: u.prompt_token_count,
            output_tokens: u.candidates_token_count + u.thoughts_token_count,
        });
    if let Some(feedback) = response.prompt_feedback
        && let Some(reason) = feedback.block_reason
    {
        let detail = feedback
            .block_reason_message
            .map_or_else(String::new, |m| format!(": {m}"));
        return (
            Answer::failed(
                error_type::REFUSAL,
                format!("the prompt was blocked ({reason}){detail}"),
            ),
            usage,
        );
    }
    let Some(candidate) = response.candidates.into_iter().next() else {
        return (
            Answer::failed(
                error_type::NO_STRUCTURED_OUTPUT,
                "the response has no candidates",
            ),
            usage,
        );
    };
    let finish_reason = candidate.finish_reason.as_deref();
    if let Some(reason) = finish_reason.filter(|r| REFUSAL_FINISH_REASONS.contains(r)) {
        return (
            Answer::failed(
                error_type::REFUSAL,
                format!("generation was stopped (finishReason {reason})"),
            ),
            usage,
        );
    }
    if finish_reason == Some("MAX_TOKENS") {
        return (Answer::truncated("finishReason MAX_TOKENS"), usage);
    }
    let text = candidate
        .content
        .map(|c| answer_text(c.parts))
        .unwrap_or_default();
    let answer = if text.trim().is_empty() {
        Answer::failed(
            error_type::NO_STRUCTURED_OUTPUT,
            format!(
                "the candidate has no text (finishReason {})",
                finish_reason.unwrap_or("none")
            ),
        )
    } else {
        Answer::Text(text)
    };
    (answer, usage)
}

/// Joins the answer parts; one part (the usual case) is passed through as is.
fn answer_text(parts: Vec<Part<'_>>) -> Cow<'_, str> {
    let mut texts = parts
        .into_iter()
        .filter(|p| !p.thought)
        .filter_map(|p| p.text);
    let Some(first) = texts.next() else {
        return Cow::Borrowed("");
    };
    texts.fold(first, |mut joined, next| {
        joined.to_mut().push_str(&next);
        joined
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::expect_failed;

    fn ids() -> Vec<String> {
        vec!["a".into(), "b".into(), "c".into()]
    }

    fn line_with(row: &str, rest: &str) -> Vec<u8> {
        format!(
            r#"{{"processed_time":"2026-01-01T00:00:00Z","request":{{"contents":[{{"role":"user","parts":[{{"text":"hi"}}]}}],"labels":{{"{ROW_LABEL}":"{row}"}}}},{rest}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn success_maps_the_row_and_joins_parts() {
        let ids = ids();
        let line = line_with(
            "1",
            r#""status":"","response":{"candidates":[{"content":{"role":"model","parts":[{"text":"thinking...","thought":true},{"text":"{\"name\":"},{"text":"\"Ada\"}"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":11,"candidatesTokenCount":6,"thoughtsTokenCount":2,"totalTokenCount":19}}"#,
        );
        let decoded = decode(&line, &ids).unwrap();
        assert_eq!(decoded.custom_id, "b");
        assert_eq!(
            decoded.usage,
            Usage {
                input_tokens: 11,
                output_tokens: 8
            }
        );
        match decoded.answer {
            Answer::Text(text) => assert_eq!(text, r#"{"name":"Ada"}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn status_errors_keep_the_message() {
        let ids = ids();
        let throttled = line_with(
            "0",
            r#""status":"Error: RESOURCE_EXHAUSTED: Quota exceeded for aiplatform.googleapis.com","response":null"#,
        );
        let decoded = decode(&throttled, &ids).unwrap();
        assert_eq!(decoded.custom_id, "a");
        let (kind, message) = expect_failed(&decoded);
        assert_eq!(kind, "rate_limit");
        assert!(message.contains("Quota exceeded"));

        let http = line_with("2", r#""status":"429 Too Many Requests""#);
        assert_eq!(expect_failed(&decode(&http, &ids).unwrap()).0, "rate_limit");

        let other = line_with(
            "2",
            r#""status":"Bad Request: {\"error\": {\"code\": 400, \"message\": \"Invalid JSON payload\", \"status\": \"INVALID_ARGUMENT\"}}""#,
        );
        let (kind, message) = expect_failed(&decode(&other, &ids).unwrap());
        assert_eq!(kind, "provider_error");
        assert!(message.contains("Invalid JSON payload"));

        let rpc = line_with(
            "2",
            r#""status":{"code":8,"message":"quota","status":"RESOURCE_EXHAUSTED"}"#,
        );
        assert_eq!(
            expect_failed(&decode(&rpc, &ids).unwrap()),
            ("rate_limit".into(), "RESOURCE_EXHAUSTED: 8: quota".into())
        );
    }

    #[test]
    fn refusals_and_truncation() {
        let ids = ids();
        for reason in ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT"] {
            let line = line_with(
                "0",
                &format!(
                    r#""status":"","response":{{"candidates":[{{"finishReason":"{reason}"}}]}}"#
                ),
            );
            let (kind, message) = expect_failed(&decode(&line, &ids).unwrap());
            assert_eq!(kind, "refusal");
            assert!(message.contains(reason));
        }
        let blocked = line_with(
            "0",
            r#""status":"","response":{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":"5"}}"#,
        );
        let decoded = decode(&blocked, &ids).unwrap();
        assert_eq!(expect_failed(&decoded).0, "refusal");
        assert_eq!(decoded.usage.input_tokens, 5);

        let truncated = line_with(
            "0",
            r#""status":"","response":{"candidates":[{"content":{"parts":[{"text":"{\"name\":\"A"}]},"finishReason":"MAX_TOKENS"}]}"#,
        );
        let (kind, message) = expect_failed(&decode(&truncated, &ids).unwrap());
        assert_eq!(kind, "invalid_json");
        assert!(message.contains("cut off by the token limit"));

        let empty = line_with(
            "0",
            r#""status":"","response":{"candidates":[{"content":{"parts":[]},"finishReason":"STOP"}]}"#,
        );
        assert_eq!(
            expect_failed(&decode(&empty, &ids).unwrap()).0,
            "no_structured_output"
        );
    }

    #[test]
    fn rows_that_do_not_map_are_malformed() {
        let ids = ids();
        for row in ["3", "-1", "+1", "one", ""] {
            let line = line_with(row, r#""status":"","response":{"candidates":[]}"#);
            let err = decode(&line, &ids).unwrap_err();
            assert_eq!(err.custom_id, None, "{row}");
            assert!(err.reason.contains("batchline_row"), "{}", err.reason);
        }
        let unlabelled = br#"{"status":"","request":{"contents":[]},"response":{"candidates":[]}}"#;
        assert!(
            decode(unlabelled, &ids)
                .unwrap_err()
                .reason
                .contains("no labels")
        );
    }

    #[test]
    fn broken_lines_keep_the_row_when_they_can() {
        let ids = ids();
        let wrong_shape = line_with("2", r#""status":"","response":{"candidates":7}"#);
        assert_eq!(
            decode(&wrong_shape, &ids).unwrap_err().custom_id.as_deref(),
            Some("c")
        );
        let neither = line_with("1", r#""status":"""#);
        assert_eq!(
            decode(&neither, &ids).unwrap_err().custom_id.as_deref(),
            Some("b")
        );
        assert_eq!(decode(b"{", &ids).unwrap_err().custom_id, None);
    }
}
