//! OpenAI result-line decoding. The output file and the error file share one line
//! shape; success is decided by `response.status_code`, never by `error` alone.

use std::borrow::Cow;

use serde::Deserialize;

use crate::provider::decode::{
    Answer, CodeText, Decoded, Malformed, RowKey, Usage, error_type, first_element, from_line,
    optional_borrowed,
};

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    custom_id: Cow<'a, str>,
    #[serde(borrow)]
    response: Option<Response<'a>>,
    /// Set for requests that never ran (batch expired or cancelled).
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct Response<'a> {
    status_code: u16,
    /// A chat completion on 200, `{"error":{…}}` otherwise.
    #[serde(borrow, default)]
    body: Option<Body<'a>>,
}

#[derive(Deserialize)]
struct Body<'a> {
    /// The first choice, the answer; any others are read and dropped.
    #[serde(
        rename = "choices",
        borrow,
        default,
        deserialize_with = "first_element"
    )]
    choice: Option<Choice<'a>>,
    usage: Option<CompletionUsage>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    message: Option<ChatMessage<'a>>,
    /// Borrowed: read on every line, so not worth an allocation.
    #[serde(borrow, default, deserialize_with = "optional_borrowed")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ChatMessage<'a> {
    #[serde(borrow, default, deserialize_with = "optional_borrowed")]
    content: Option<Cow<'a, str>>,
    refusal: Option<String>,
}

#[derive(Deserialize)]
struct CompletionUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

/// Of the prompt tokens, those served from the prompt cache (part of `prompt_tokens`).
#[derive(Deserialize)]
struct PromptTokensDetails {
    #[serde(default)]
    cached_tokens: u64,
}

/// `{"message","type","param","code"}`; `code` may be null.
#[derive(Deserialize)]
struct ApiError {
    message: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<CodeText>,
}

impl ApiError {
    fn message(&self) -> &str {
        self.message.as_deref().unwrap_or("no message")
    }
}

/// Decodes one line of an OpenAI batch output or error file.
pub fn decode(line: &[u8]) -> Result<Decoded<'_>, Malformed> {
    let parsed: Line<'_> =
        from_line(line).map_err(|e| Malformed::unreadable(&e, line, &[&["custom_id"]]))?;
    let (answer, usage) = match (parsed.response, parsed.error) {
        (Some(response), _) => decode_response(response),
        (None, Some(error)) => (never_ran(&error), Usage::default()),
        (None, None) => {
            return Err(Malformed::new(
                Some(parsed.custom_id.into_owned()),
                "the line has neither a response nor an error",
            ));
        }
    };
    Ok(Decoded {
        key: RowKey::CustomId(parsed.custom_id),
        usage,
        answer,
    })
}

/// A request that got no answer because the batch ended first.
fn never_ran(error: &ApiError) -> Answer<'static> {
    let code = error.code.as_ref().map(|c| c.0.as_str());
    let error_type = match code {
        Some("batch_expired") => error_type::EXPIRED.to_string(),
        Some("batch_cancelled") => error_type::CANCELLED.to_string(),
        Some(other) => other.to_string(),
        None => error
            .kind
            .clone()
            .unwrap_or_else(|| error_type::PROVIDER_ERROR.to_string()),
    };
    Answer::failed(error_type, error.message())
}

fn decode_response(response: Response<'_>) -> (Answer<'_>, Usage) {
    let Some(body) = response.body else {
        return (
            Answer::failed(
                error_type::PROVIDER_ERROR,
                format!("HTTP {} without a body", response.status_code),
            ),
            Usage::default(),
        );
    };
    if response.status_code != 200 {
        return (
            api_failure(response.status_code, body.error),
            Usage::default(),
        );
    }
    let usage = body.usage.map_or_else(Usage::default, |u| Usage {
        input_tokens: u.prompt_tokens,
        output_tokens: u.completion_tokens,
        cached_input_tokens: u.prompt_tokens_details.map_or(0, |d| d.cached_tokens),
        cache_write_input_tokens: 0,
    });
    (completion_answer(body.choice), usage)
}

fn api_failure(status: u16, error: Option<ApiError>) -> Answer<'static> {
    match error {
        Some(error) => {
            let error_type = error
                .code
                .as_ref()
                .map(|c| c.0.clone())
                .or_else(|| error.kind.clone())
                .unwrap_or_else(|| error_type::PROVIDER_ERROR.to_string());
            Answer::failed(error_type, format!("HTTP {status}: {}", error.message()))
        }
        None => Answer::failed(
            error_type::PROVIDER_ERROR,
            format!("HTTP {status} without an error object"),
        ),
    }
}

fn completion_answer(choice: Option<Choice<'_>>) -> Answer<'_> {
    let Some(choice) = choice else {
        return Answer::failed(
            error_type::NO_STRUCTURED_OUTPUT,
            "the completion has no choices",
        );
    };
    let (content, refusal) = match choice.message {
        Some(message) => (message.content, message.refusal),
        None => (None, None),
    };
    if let (None, Some(refusal)) = (&content, refusal) {
        return Answer::failed(error_type::REFUSAL, refusal);
    }
    match choice.finish_reason.as_deref() {
        Some("length") => return Answer::truncated("finish_reason \"length\""),
        Some("content_filter") => {
            return Answer::failed(
                error_type::REFUSAL,
                "the content filter withheld the answer (finish_reason \"content_filter\")",
            );
        }
        _ => {}
    }
    match content {
        Some(text) => Answer::Text(text),
        None => Answer::failed(
            error_type::NO_STRUCTURED_OUTPUT,
            "the message has no content",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::decode::expect_failed;

    #[test]
    fn success_borrows_custom_id_and_reads_usage() {
        let line = br#"{"id":"batch_req_1","custom_id":"r-1","response":{"status_code":200,"request_id":"req_1","body":{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"{\"name\":\"Ada\"}","refusal":null},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17}}},"error":null}"#;
        let decoded = decode(line).unwrap();
        assert!(matches!(
            decoded.key,
            RowKey::CustomId(Cow::Borrowed("r-1"))
        ));
        assert_eq!(
            decoded.usage,
            Usage {
                input_tokens: 12,
                output_tokens: 5,
                ..Usage::default()
            }
        );
        match decoded.answer {
            Answer::Text(text) => assert_eq!(text, r#"{"name":"Ada"}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_200_takes_code_then_type_even_without_line_error() {
        let line = br#"{"id":"batch_req_2","custom_id":"r-2","response":{"status_code":400,"request_id":"req_2","body":{"error":{"message":"This model's maximum context length is 128000 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}},"error":null}"#;
        let decoded = decode(line).unwrap();
        let (kind, message) = expect_failed(&decoded);
        assert_eq!(kind, "context_length_exceeded");
        assert!(message.contains("HTTP 400") && message.contains("maximum context length"));

        let line = br#"{"custom_id":"r-3","response":{"status_code":429,"body":{"error":{"message":"Rate limit reached","type":"rate_limit_exceeded","param":null,"code":null}}},"error":null}"#;
        assert_eq!(
            expect_failed(&decode(line).unwrap()).0,
            "rate_limit_exceeded"
        );
    }

    #[test]
    fn batch_expired_and_cancelled_get_our_types() {
        let line = br#"{"id":"batch_req_4","custom_id":"r-4","response":null,"error":{"code":"batch_expired","message":"This request could not be executed before the completion window expired."}}"#;
        let (kind, message) = expect_failed(&decode(line).unwrap());
        assert_eq!(kind, "expired");
        assert!(message.contains("completion window"));

        let line = br#"{"custom_id":"r-5","response":null,"error":{"code":"batch_cancelled","message":"cancelled"}}"#;
        assert_eq!(expect_failed(&decode(line).unwrap()).0, "cancelled");
    }

    #[test]
    fn refusal_truncation_and_missing_content() {
        let refusal = br#"{"custom_id":"r","response":{"status_code":200,"body":{"choices":[{"message":{"content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":7}}},"error":null}"#;
        let decoded = decode(refusal).unwrap();
        assert_eq!(
            expect_failed(&decoded),
            ("refusal".into(), "I can't help with that.".into())
        );
        assert_eq!(decoded.usage.output_tokens, 7);

        let truncated = br#"{"custom_id":"r","response":{"status_code":200,"body":{"choices":[{"message":{"content":"{\"name\":\"A"},"finish_reason":"length"}]}},"error":null}"#;
        let (kind, message) = expect_failed(&decode(truncated).unwrap());
        assert_eq!(kind, "invalid_json");
        assert!(message.contains("cut off by the token limit"), "{message}");

        let no_choices = br#"{"custom_id":"r","response":{"status_code":200,"body":{"choices":[]}},"error":null}"#;
        assert_eq!(
            expect_failed(&decode(no_choices).unwrap()).0,
            "no_structured_output"
        );
        let no_content = br#"{"custom_id":"r","response":{"status_code":200,"body":{"choices":[{"message":{"content":null},"finish_reason":"stop"}]}},"error":null}"#;
        assert_eq!(
            expect_failed(&decode(no_content).unwrap()).0,
            "no_structured_output"
        );
    }

    #[test]
    fn unreadable_lines_keep_the_id_when_they_can() {
        let wrong_shape =
            br#"{"custom_id":"r-9","response":{"status_code":"two hundred"},"error":null}"#;
        assert_eq!(decode(wrong_shape).unwrap_err().custom_id(), Some("r-9"));
        let neither = br#"{"custom_id":"r-10","response":null,"error":null}"#;
        assert_eq!(decode(neither).unwrap_err().custom_id(), Some("r-10"));
        // Cut off after the id: the id is still read.
        let cut = br#"{"custom_id":"r-11","respo"#;
        assert_eq!(decode(cut).unwrap_err().custom_id(), Some("r-11"));
        for garbage in [
            &b""[..],
            b"not json",
            b"\xff\xfe\x00garbage",
            br#"{"custom_id":"r-1"#,
        ] {
            assert_eq!(decode(garbage).unwrap_err().key, None);
        }
    }
}
