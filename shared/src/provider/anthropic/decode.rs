//! Anthropic result-line decoding (Message Batches results JSONL). A structured answer
//! ([`decode`]) is the `input` of the forced `tool_use` block, or, for a request sent
//! with `output_config`, the message's text (JSON text); a request sent without a
//! schema (text and JSON modes) is answered by the message's text blocks, joined
//! ([`decode_text`]).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::provider::decode::{
    Answer, Decoded, Malformed, RowKey, Usage, error_type, from_line, joined, optional_borrowed,
};

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
    /// Borrowed: read on every line, so not worth an allocation.
    #[serde(borrow, default, deserialize_with = "optional_borrowed")]
    stop_reason: Option<Cow<'a, str>>,
    usage: Option<MessageUsage>,
}

#[derive(Deserialize)]
struct ContentBlock<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "optional_borrowed")]
    text: Option<Cow<'a, str>>,
}

/// Which part of a message is the answer.
#[derive(Clone, Copy)]
enum AnswerPart {
    /// The forced tool's input, else (an `output_config` answer) the text blocks.
    Structured,
    /// The text blocks, joined.
    Text,
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

/// Decodes one line of an Anthropic batch results file of requests with a schema: the
/// answer is the forced tool's input, or the message's text for a request sent with
/// `output_config`. The line does not say which encoding its request had, and it needs
/// not: a forced tool is always answered by a `tool_use` block, and a request with
/// `output_config` carries no tool to answer with.
pub fn decode(line: &[u8]) -> Result<Decoded<'_>, Malformed> {
    decode_as(line, AnswerPart::Structured)
}

/// Decodes one line of an Anthropic batch results file of requests without a tool:
/// the answer is the message's text blocks, joined.
pub fn decode_text(line: &[u8]) -> Result<Decoded<'_>, Malformed> {
    decode_as(line, AnswerPart::Text)
}

fn decode_as(line: &[u8], part: AnswerPart) -> Result<Decoded<'_>, Malformed> {
    let parsed: Line<'_> =
        from_line(line).map_err(|e| Malformed::unreadable(&e, line, &[&["custom_id"]]))?;
    let result = parsed.result;
    let (answer, usage) = match result.kind.as_ref() {
        "succeeded" => match result.message {
            Some(message) => message_answer(message, part),
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

fn message_answer(message: Message<'_>, part: AnswerPart) -> (Answer<'_>, Usage) {
    let usage = message.usage.map_or_else(Usage::default, |u| {
        Usage::with_cache_apart(
            u.input_tokens,
            u.output_tokens,
            u.cache_read_input_tokens,
            u.cache_creation_input_tokens,
        )
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
    let tool_input = match part {
        AnswerPart::Structured => message
            .content
            .iter()
            .find(|block| block.kind == "tool_use")
            .and_then(|block| block.input),
        AnswerPart::Text => None,
    };
    let answer = match tool_input {
        Some(input) => Some(Answer::Embedded(input)),
        // A text cut off by the token limit is not the answer, as at the other providers.
        None if stop_reason == Some("max_tokens") => None,
        None => joined_text(message.content).map(Answer::Text),
    };
    let answer = match (answer, stop_reason) {
        // A tool call cut off by the limit is closed by the API but incomplete.
        (_, Some("max_tokens")) => Answer::truncated("stop_reason \"max_tokens\""),
        (Some(answer), _) => answer,
        (None, _) => Answer::failed(
            error_type::NO_STRUCTURED_OUTPUT,
            format!(
                "the message has no {} block (stop_reason {:?})",
                match part {
                    AnswerPart::Structured => "tool_use or text",
                    AnswerPart::Text => "text",
                },
                stop_reason.unwrap_or("none")
            ),
        ),
    };
    (answer, usage)
}

/// The text blocks in order, joined without separator (borrowed when there is one).
fn joined_text<'a>(content: Vec<ContentBlock<'a>>) -> Option<Cow<'a, str>> {
    joined(
        content
            .into_iter()
            .filter(|block| block.kind == "text")
            .filter_map(|block| block.text),
    )
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

        let nothing = br#"{"custom_id":"d","result":{"type":"succeeded","message":{"content":[],"stop_reason":"end_turn"}}}"#;
        let (kind, message) = expect_failed(&decode(nothing).unwrap());
        assert_eq!(kind, "no_structured_output");
        assert!(message.contains("no tool_use or text block"), "{message}");
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

    #[test]
    fn text_answers_are_the_text_blocks_joined() {
        let line = br#"{"custom_id":"d","result":{"type":"succeeded","message":{"content":[{"type":"text","text":"Ada was "},{"type":"text","text":"36."}],"stop_reason":"end_turn","usage":{"input_tokens":4,"output_tokens":3}}}}"#;
        match decode_text(line).unwrap().answer {
            Answer::Text(text) => assert_eq!(text, "Ada was 36."),
            other => panic!("{other:?}"),
        }
        let one = br#"{"custom_id":"d","result":{"type":"succeeded","message":{"content":[{"type":"text","text":"{\"a\":1}"}],"stop_reason":"end_turn"}}}"#;
        match decode_text(one).unwrap().answer {
            Answer::Text(text) => assert_eq!(text, r#"{"a":1}"#),
            other => panic!("{other:?}"),
        }
        // The same line read for a schema is an output_config answer: its text.
        match decode(one).unwrap().answer {
            Answer::Text(text) => assert_eq!(text, r#"{"a":1}"#),
            other => panic!("{other:?}"),
        }
        let empty = br#"{"custom_id":"d","result":{"type":"succeeded","message":{"content":[],"stop_reason":"end_turn"}}}"#;
        let (kind, message) = expect_failed(&decode_text(empty).unwrap());
        assert_eq!(kind, "no_structured_output");
        assert!(message.contains("no text block"), "{message}");
        let truncated = br#"{"custom_id":"d","result":{"type":"succeeded","message":{"content":[{"type":"text","text":"Once upon"}],"stop_reason":"max_tokens"}}}"#;
        assert!(
            expect_failed(&decode_text(truncated).unwrap())
                .1
                .contains("cut off by the token limit")
        );
    }

    /// An `output_config` answer: the text block holds the JSON, `stop_reason` is
    /// `end_turn`; a preamble text beside a tool call is not the answer.
    #[test]
    fn structured_answers_are_the_tool_input_or_the_output_config_text() {
        let line = br#"{"custom_id":"doc-9","result":{"type":"succeeded","message":{"id":"msg_9","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"{\"name\":\"Ada\",\"age\":36}"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":20,"output_tokens":9}}}}"#;
        let decoded = decode(line).unwrap();
        assert_eq!(decoded.key.custom_id(), Some("doc-9"));
        assert_eq!(decoded.usage.output_tokens, 9);
        match decoded.answer {
            Answer::Text(text) => assert_eq!(text, r#"{"name":"Ada","age":36}"#),
            other => panic!("{other:?}"),
        }
        let tool = br#"{"custom_id":"d","result":{"type":"succeeded","message":{"content":[{"type":"text","text":"Sure."},{"type":"tool_use","id":"t","name":"p","input":{"a":1}}],"stop_reason":"tool_use"}}}"#;
        match decode(tool).unwrap().answer {
            Answer::Embedded(raw) => assert_eq!(raw.get(), r#"{"a":1}"#),
            other => panic!("{other:?}"),
        }
        // Cut off by the token limit: the JSON text is incomplete.
        let cut = br#"{"custom_id":"d","result":{"type":"succeeded","message":{"content":[{"type":"text","text":"{\"name\":\"Ad"}],"stop_reason":"max_tokens"}}}"#;
        assert_eq!(expect_failed(&decode(cut).unwrap()).0, "invalid_json");
        let refused = br#"{"custom_id":"d","result":{"type":"succeeded","message":{"content":[{"type":"text","text":"I can't help with that."}],"stop_reason":"refusal"}}}"#;
        assert_eq!(expect_failed(&decode(refused).unwrap()).0, "refusal");
    }
}
