//! Anthropic result-line decoding (Message Batches results JSONL). The structured
//! answer is the `input` of the forced `tool_use` block.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::provider::decode::{Answer, Decoded, Malformed, RowKey, Usage, error_type};

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    custom_id: Cow<'a, str>,
    #[serde(borrow)]
    result: RequestResult<'a>,
}

/// `{"type":"succeeded|errored|canceled|expired", …}`. Not a serde-tagged enum: those
/// buffer their content, which breaks borrowing `&RawValue`.
#[derive(Deserialize)]
struct RequestResult<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    message: Option<Message<'a>>,
    error: Option<ErrorResponse>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    content: Vec<ContentBlock<'a>>,
    stop_reason: Option<String>,
    usage: Option<MessageUsage>,
}

#[derive(Deserialize)]
struct ContentBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MessageUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    /// Prompt tokens written to the cache; not part of `input_tokens`.
    #[serde(default)]
    cache_creation_input_tokens: u64,
    /// Prompt tokens read from the cache; not part of `input_tokens`.
    #[serde(default)]
    cache_read_input_tokens: u64,
}

/// `{"type":"error","error":{"type","message"}}`; the inner object is the one that
/// says what went wrong.
#[derive(Deserialize)]
struct ErrorResponse {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
    error: Option<ErrorDetail>,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(rename = "type")]
    kind: Option<String>,
    message: Option<String>,
}

/// Decodes one line of an Anthropic batch results file.
pub fn decode(line: &[u8]) -> Result<Decoded<'_>, Malformed> {
    let parsed: Line<'_> = serde_json::from_slice(line)
        .map_err(|e| Malformed::unreadable(&e, line, &[&["custom_id"]]))?;
    let result = parsed.result;
    let (answer, usage) = match result.kind.as_ref() {
        "succeeded" => match result.message {
            Some(message) => message_answer(message),
            None => {
                return Err(Malformed::new(
                    Some(parsed.custom_id.into_owned()),
                    "a succeeded result without a message",
                ));
            }
        },
        "errored" => (errored(result.error), Usage::default()),
        "canceled" => (
            Answer::failed(
                error_type::CANCELLED,
                "the batch was canceled before this request ran",
            ),
            Usage::default(),
        ),
        "expired" => (
            Answer::failed(
                error_type::EXPIRED,
                "the batch expired before this request ran",
            ),
            Usage::default(),
        ),
        other => {
            return Err(Malformed::new(
                Some(parsed.custom_id.into_owned()),
                format!("unknown result type {other:?}"),
            ));
        }
    };
    Ok(Decoded {
        key: RowKey::CustomId(parsed.custom_id),
        usage,
        answer,
    })
}

fn message_answer(message: Message<'_>) -> (Answer<'_>, Usage) {
    let usage = message.usage.map_or_else(Usage::default, |u| Usage {
        input_tokens: u.input_tokens + u.cache_creation_input_tokens + u.cache_read_input_tokens,
        output_tokens: u.output_tokens,
        cached_input_tokens: u.cache_read_input_tokens,
        cache_write_input_tokens: u.cache_creation_input_tokens,
    });
    let stop_reason = message.stop_reason.as_deref();
    if stop_reason == Some("refusal") {
        return (
            Answer::failed(
                error_type::REFUSAL,
                "the model declined to answer (stop_reason \"refusal\")",
            ),
            usage,
        );
    }
    let tool_input = message
        .content
        .iter()
        .find(|block| block.kind == "tool_use")
        .and_then(|block| block.input);
    let answer = match (tool_input, stop_reason) {
        // A tool call cut off by the limit is closed by the API but incomplete.
        (_, Some("max_tokens")) => Answer::truncated("stop_reason \"max_tokens\""),
        (Some(input), _) => Answer::Embedded(input),
        (None, _) => Answer::failed(
            error_type::NO_STRUCTURED_OUTPUT,
            format!(
                "the message has no tool_use block (stop_reason {:?})",
                stop_reason.unwrap_or("none")
            ),
        ),
    };
    (answer, usage)
}

fn errored(error: Option<ErrorResponse>) -> Answer<'static> {
    let Some(error) = error else {
        return Answer::failed(
            error_type::PROVIDER_ERROR,
            "errored without an error object",
        );
    };
    // Prefer the inner detail; tolerate the flat form `{"type":"…_error","message"}`.
    let (kind, message) = match error.error {
        Some(detail) => (detail.kind, detail.message),
        None => (error.kind.filter(|k| k != "error"), error.message),
    };
    Answer::failed(
        kind.unwrap_or_else(|| error_type::PROVIDER_ERROR.to_string()),
        message.unwrap_or_else(|| "no message".to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::decode::expect_failed;

    #[test]
    fn success_borrows_the_tool_input() {
        let line = br#"{"custom_id":"doc-1","result":{"type":"succeeded","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Here you go"},{"type":"tool_use","id":"toolu_1","name":"person","input":{"name":"Ada","age":36}}],"stop_reason":"tool_use","stop_sequence":null,"usage":{"input_tokens":20,"output_tokens":9}}}}"#;
        let decoded = decode(line).unwrap();
        assert_eq!(decoded.key.custom_id(), Some("doc-1"));
        assert_eq!(
            decoded.usage,
            Usage {
                input_tokens: 20,
                output_tokens: 9,
                ..Usage::default()
            }
        );
        match decoded.answer {
            Answer::Embedded(raw) => assert_eq!(raw.get(), r#"{"name":"Ada","age":36}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errored_takes_the_inner_type() {
        let line = br#"{"custom_id":"doc-2","result":{"type":"errored","error":{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your rate limit."}}}}"#;
        let (kind, message) = expect_failed(&decode(line).unwrap());
        assert_eq!(kind, "rate_limit_error");
        assert!(message.contains("rate limit"));

        let line = br#"{"custom_id":"doc-3","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too large"}}}}"#;
        assert_eq!(
            expect_failed(&decode(line).unwrap()),
            (
                "invalid_request_error".into(),
                "max_tokens: too large".into()
            )
        );
    }

    #[test]
    fn canceled_and_expired_are_reported_as_such() {
        let canceled = br#"{"custom_id":"doc-4","result":{"type":"canceled"}}"#;
        assert_eq!(expect_failed(&decode(canceled).unwrap()).0, "cancelled");
        let expired = br#"{"custom_id":"doc-5","result":{"type":"expired"}}"#;
        assert_eq!(expect_failed(&decode(expired).unwrap()).0, "expired");
    }

    #[test]
    fn refusal_truncation_and_plain_text() {
        let refusal = br#"{"custom_id":"d","result":{"type":"succeeded","message":{"content":[{"type":"text","text":"I can't"}],"stop_reason":"refusal","usage":{"input_tokens":4,"output_tokens":2}}}}"#;
        let decoded = decode(refusal).unwrap();
        assert_eq!(expect_failed(&decoded).0, "refusal");
        assert_eq!(decoded.usage.output_tokens, 2);

        let truncated = br#"{"custom_id":"d","result":{"type":"succeeded","message":{"content":[{"type":"text","text":"Let me think"}],"stop_reason":"max_tokens","usage":{"input_tokens":4,"output_tokens":1024}}}}"#;
        let (kind, message) = expect_failed(&decode(truncated).unwrap());
        assert_eq!(kind, "invalid_json");
        assert!(message.contains("cut off by the token limit"));

        // The API closes a tool call cut off by the limit: valid JSON, but incomplete.
        let cut_tool = br#"{"custom_id":"d","result":{"type":"succeeded","message":{"content":[{"type":"tool_use","id":"t","name":"invoice","input":{"vendor":"AC"}}],"stop_reason":"max_tokens","usage":{"input_tokens":4,"output_tokens":8}}}}"#;
        assert_eq!(expect_failed(&decode(cut_tool).unwrap()).0, "invalid_json");

        let text_only = br#"{"custom_id":"d","result":{"type":"succeeded","message":{"content":[{"type":"text","text":"{}"}],"stop_reason":"end_turn"}}}"#;
        assert_eq!(
            expect_failed(&decode(text_only).unwrap()).0,
            "no_structured_output"
        );
    }

    #[test]
    fn unknown_or_broken_results_are_malformed_with_their_id() {
        let unknown = br#"{"custom_id":"d-6","result":{"type":"postponed"}}"#;
        let err = decode(unknown).unwrap_err();
        assert_eq!(err.custom_id(), Some("d-6"));
        assert!(err.reason.contains("postponed"));
        let no_message = br#"{"custom_id":"d-7","result":{"type":"succeeded"}}"#;
        assert_eq!(decode(no_message).unwrap_err().custom_id(), Some("d-7"));
        let no_result = br#"{"custom_id":"d-8"}"#;
        assert_eq!(decode(no_result).unwrap_err().custom_id(), Some("d-8"));
        assert_eq!(decode(b"\x00\x01").unwrap_err().key, None);
    }
}
