//! Bedrock batch output decoding (`<input>.jsonl.out` lines). A line is
//! `{"recordId","modelInput","modelOutput":{Converse response}}` or
//! `{"recordId","modelInput","error":{"errorCode","errorMessage"}}`; `modelInput` (the
//! request echoed) is skipped, never copied. The structured answer is the forced
//! tool's `toolUse.input` ([`decode`]); a request sent without a tool is answered by
//! the message's text blocks, joined ([`decode_text`]).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::provider::decode::{
    Answer, CodeText, Decoded, Malformed, RowKey, Usage, error_type, from_line, joined,
    optional_borrowed,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Line<'a> {
    #[serde(borrow)]
    record_id: Cow<'a, str>,
    #[serde(borrow)]
    model_output: Option<ConverseOutput<'a>>,
    // `modelInput`, on every line, is an unknown field to serde: skipped, never held.
    error: Option<RecordError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseOutput<'a> {
    #[serde(borrow)]
    output: Option<Output<'a>>,
    stop_reason: Option<Cow<'a, str>>,
    usage: Option<ConverseUsage>,
}

#[derive(Deserialize)]
struct Output<'a> {
    #[serde(borrow)]
    message: Option<Message<'a>>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    content: Vec<ContentBlock<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContentBlock<'a> {
    #[serde(borrow, default, deserialize_with = "optional_borrowed")]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_use: Option<ToolUse<'a>>,
}

#[derive(Deserialize)]
struct ToolUse<'a> {
    #[serde(borrow)]
    input: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConverseUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    /// Prompt tokens read from the cache; Converse counts them apart from `inputTokens`.
    #[serde(default)]
    cache_read_input_tokens: u64,
    /// Prompt tokens written to the cache; also apart from `inputTokens`.
    #[serde(default)]
    cache_write_input_tokens: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordError {
    error_code: Option<CodeText>,
    error_message: Option<String>,
}

/// Which part of a message is the answer.
#[derive(Clone, Copy)]
enum AnswerPart {
    /// The forced tool's input.
    ToolInput,
    /// The text blocks, joined.
    Text,
}

/// Decodes one output line of records sent with the forced tool.
pub fn decode(line: &[u8]) -> Result<Decoded<'_>, Malformed> {
    decode_as(line, AnswerPart::ToolInput)
}

/// Decodes one output line of records sent without a tool (text and JSON modes).
pub fn decode_text(line: &[u8]) -> Result<Decoded<'_>, Malformed> {
    decode_as(line, AnswerPart::Text)
}

fn decode_as(line: &[u8], part: AnswerPart) -> Result<Decoded<'_>, Malformed> {
    let parsed: Line<'_> =
        from_line(line).map_err(|e| Malformed::unreadable(&e, line, &[&["recordId"]]))?;
    let (answer, usage) = match (parsed.model_output, parsed.error) {
        (_, Some(error)) => (record_error(error), Usage::default()),
        (Some(output), None) => output_answer(output, part),
        (None, None) => {
            return Err(Malformed::new(
                Some(parsed.record_id.into_owned()),
                "a record with neither modelOutput nor error",
            ));
        }
    };
    Ok(Decoded {
        key: RowKey::CustomId(parsed.record_id),
        usage,
        answer,
    })
}

fn output_answer(output: ConverseOutput<'_>, part: AnswerPart) -> (Answer<'_>, Usage) {
    let usage = output.usage.map_or_else(Usage::default, |u| {
        Usage::with_cache_apart(
            u.input_tokens,
            u.output_tokens,
            u.cache_read_input_tokens,
            u.cache_write_input_tokens,
        )
    });
    let stop_reason = output.stop_reason.as_deref().unwrap_or("");
    let content = output
        .output
        .and_then(|o| o.message)
        .map(|m| m.content)
        .unwrap_or_default();
    let answer = match stop_reason {
        // A tool call cut off by the limit is closed by the API: valid JSON, incomplete.
        "max_tokens" => Answer::truncated("stopReason max_tokens"),
        "guardrail_intervened" | "content_filtered" => Answer::failed(
            error_type::REFUSAL,
            format!("the model's answer was blocked (stopReason {stop_reason})"),
        ),
        _ => match part {
            AnswerPart::ToolInput => content
                .into_iter()
                .find_map(|block| block.tool_use)
                .map(|tool| Answer::Embedded(tool.input))
                .unwrap_or_else(|| {
                    Answer::failed(
                        error_type::NO_STRUCTURED_OUTPUT,
                        format!("the model answered without calling the tool (stopReason {stop_reason:?})"),
                    )
                }),
            AnswerPart::Text => joined(content.into_iter().filter_map(|block| block.text))
                .map_or_else(
                    || {
                        Answer::failed(
                            error_type::NO_STRUCTURED_OUTPUT,
                            "the model answered without text",
                        )
                    },
                    Answer::Text,
                ),
        },
    };
    (answer, usage)
}

/// Bedrock reports a record's failure by the HTTP status its model call got; the error
/// type is the exception that status stands for in the Bedrock runtime API.
fn record_error(error: RecordError) -> Answer<'static> {
    let code = error.error_code.map(|c| c.0).unwrap_or_default();
    let message = error
        .error_message
        .unwrap_or_else(|| "no message".to_string());
    Answer::failed(
        exception_name(&code).unwrap_or(error_type::PROVIDER_ERROR),
        {
            if code.is_empty() {
                message
            } else {
                format!("{code}: {message}")
            }
        },
    )
}

/// The Bedrock runtime exception an HTTP status stands for.
pub fn exception_name(status: &str) -> Option<&'static str> {
    Some(match status {
        "400" => "ValidationException",
        "403" => "AccessDeniedException",
        "404" => "ResourceNotFoundException",
        "408" => "ModelTimeoutException",
        "424" => "ModelErrorException",
        "429" => "ThrottlingException",
        "500" => "InternalServerException",
        "503" => "ServiceUnavailableException",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::decode::expect_failed;

    #[test]
    fn success_borrows_the_tool_input_and_skips_the_echoed_input() {
        let line = br#"{"recordId":"inv/7","modelInput":{"messages":[{"role":"user","content":[{"text":"Total 12.50"}]}]},"modelOutput":{"output":{"message":{"role":"assistant","content":[{"text":"Here"},{"toolUse":{"toolUseId":"t1","name":"invoice","input":{"total":12.5}}}]}},"stopReason":"tool_use","usage":{"inputTokens":30,"outputTokens":9,"totalTokens":39,"cacheReadInputTokens":10},"metrics":{"latencyMs":120}}}"#;
        let decoded = decode(line).unwrap();
        assert_eq!(decoded.key.custom_id(), Some("inv/7"));
        assert_eq!(
            decoded.usage,
            Usage {
                input_tokens: 40,
                output_tokens: 9,
                cached_input_tokens: 10,
                cache_write_input_tokens: 0,
            }
        );
        match decoded.answer {
            Answer::Embedded(raw) => assert_eq!(raw.get(), r#"{"total":12.5}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn text_answers_are_the_joined_text_blocks() {
        let line = br#"{"recordId":"a","modelInput":{},"modelOutput":{"output":{"message":{"content":[{"text":"{\"x\":"},{"text":"1}"}]}},"stopReason":"end_turn","usage":{"inputTokens":3,"outputTokens":4}}}"#;
        match decode_text(line).unwrap().answer {
            Answer::Text(text) => assert_eq!(text, r#"{"x":1}"#),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            expect_failed(&decode(line).unwrap()).0,
            "no_structured_output"
        );
    }

    #[test]
    fn record_errors_are_named_by_their_exception() {
        let line = br#"{"recordId":"b","modelInput":{"messages":[]},"error":{"errorCode":400,"errorMessage":"Malformed input request: #: required key [messages] not found"}}"#;
        let (kind, message) = expect_failed(&decode(line).unwrap());
        assert_eq!(kind, "ValidationException");
        assert_eq!(
            message,
            "400: Malformed input request: #: required key [messages] not found"
        );
        let throttled = br#"{"recordId":"c","modelInput":{},"error":{"errorCode":429,"errorMessage":"Too many requests"}}"#;
        assert_eq!(
            expect_failed(&decode(throttled).unwrap()).0,
            "ThrottlingException"
        );
        let odd =
            br#"{"recordId":"d","modelInput":{},"error":{"errorCode":418,"errorMessage":"?"}}"#;
        assert_eq!(expect_failed(&decode(odd).unwrap()).0, "provider_error");
    }

    #[test]
    fn truncation_and_blocked_answers() {
        let cut = br#"{"recordId":"e","modelInput":{},"modelOutput":{"output":{"message":{"content":[{"toolUse":{"toolUseId":"t","name":"n","input":{"a":"b"}}}]}},"stopReason":"max_tokens","usage":{"inputTokens":3,"outputTokens":256}}}"#;
        let decoded = decode(cut).unwrap();
        assert_eq!(expect_failed(&decoded).0, "invalid_json");
        assert_eq!(decoded.usage.output_tokens, 256);
        let blocked = br#"{"recordId":"f","modelInput":{},"modelOutput":{"output":{"message":{"content":[{"text":"blocked"}]}},"stopReason":"guardrail_intervened"}}"#;
        assert_eq!(expect_failed(&decode(blocked).unwrap()).0, "refusal");
    }

    #[test]
    fn a_broken_line_keeps_its_record_id() {
        let cut = br#"{"recordId":"g-1","modelInput":{"messages":[{"role":"us"#;
        let err = decode(cut).unwrap_err();
        assert_eq!(err.custom_id(), Some("g-1"));
        let empty = br#"{"recordId":"h","modelInput":{}}"#;
        assert_eq!(decode(empty).unwrap_err().custom_id(), Some("h"));
    }
}
