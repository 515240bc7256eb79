//! Vertex AI batch prediction result-line decoding. Lines carry no key: the request
//! is named by the row number the encoder put in `request.labels.batchline_row`, which
//! the result parser maps to a custom_id through the part's manifest. The
//! `GenerateContentResponse` handling is shared with the Gemini API.

use serde::Deserialize;

use super::encode::ROW_LABEL;
use crate::provider::decode::{
    Answer, CodeText, Decoded, Malformed, RowKey, Usage, error_type, from_line, string_at,
};
use crate::provider::google::response::{GenerateContentResponse, response_answer};
use crate::provider::google::wire::rpc_code_name;

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
            } => {
                let code = code.map(|c| c.0);
                // A numeric google.rpc.Code is named, so that the text says what it is.
                let name = status.or_else(|| code.as_deref().map(rpc_code_name));
                [name, code, message]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(": ")
            }
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

/// Decodes one line of a Vertex `predictions.jsonl`.
pub fn decode(line: &[u8]) -> Result<Decoded<'_>, Malformed> {
    let parsed: Line<'_> = from_line(line).map_err(|e| {
        Malformed::at_row(
            recover_row(line),
            format!("not a readable results line: {e}"),
        )
    })?;
    let row = row_of(parsed.request)?;
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
            return Err(Malformed::at_row(
                Some(row),
                "the line has neither an error status nor a response",
            ));
        }
    };
    Ok(Decoded {
        key: RowKey::Row(row),
        usage,
        answer,
    })
}

fn row_of(request: Option<EchoedRequest>) -> Result<usize, Malformed> {
    let row = request
        .and_then(|r| r.labels)
        .and_then(|l| l.batchline_row)
        .ok_or_else(|| {
            Malformed::at_row(
                None,
                format!(
                    "the echoed request has no labels.{ROW_LABEL}, so its custom_id is unknown"
                ),
            )
        })?;
    row.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| row.parse::<usize>().ok())
        .flatten()
        .ok_or_else(|| {
            Malformed::at_row(
                None,
                format!("labels.{ROW_LABEL} {row:?} is not a row number"),
            )
        })
}

/// The row of a line whose body did not parse (of an unexpected shape, or cut off),
/// if its echoed request still names one before the line breaks.
fn recover_row(line: &[u8]) -> Option<usize> {
    let row = string_at(line, &[&["request", "labels", ROW_LABEL]])?;
    row.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| row.parse().ok())
        .flatten()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::decode::expect_failed;

    fn line_with(row: &str, rest: &str) -> Vec<u8> {
        format!(
            r#"{{"processed_time":"2026-01-01T00:00:00Z","request":{{"contents":[{{"role":"user","parts":[{{"text":"hi"}}]}}],"labels":{{"{ROW_LABEL}":"{row}"}}}},{rest}}}"#
        )
        .into_bytes()
    }

    #[test]
    fn success_maps_the_row_and_joins_parts() {
        let line = line_with(
            "1",
            r#""status":"","response":{"candidates":[{"content":{"role":"model","parts":[{"text":"thinking...","thought":true},{"text":"{\"name\":"},{"text":"\"Ada\"}"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":11,"candidatesTokenCount":6,"thoughtsTokenCount":2,"totalTokenCount":19}}"#,
        );
        let decoded = decode(&line).unwrap();
        assert_eq!(decoded.key, RowKey::Row(1));
        assert_eq!(
            decoded.usage,
            Usage {
                input_tokens: 11,
                output_tokens: 8,
                ..Usage::default()
            }
        );
        match decoded.answer {
            Answer::Text(text) => assert_eq!(text, r#"{"name":"Ada"}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn status_errors_keep_the_message() {
        let throttled = line_with(
            "0",
            r#""status":"Error: RESOURCE_EXHAUSTED: Quota exceeded for aiplatform.googleapis.com","response":null"#,
        );
        let decoded = decode(&throttled).unwrap();
        assert_eq!(decoded.key, RowKey::Row(0));
        let (kind, message) = expect_failed(&decoded);
        assert_eq!(kind, "rate_limit");
        assert!(message.contains("Quota exceeded"));

        let http = line_with("2", r#""status":"429 Too Many Requests""#);
        assert_eq!(expect_failed(&decode(&http).unwrap()).0, "rate_limit");

        let other = line_with(
            "2",
            r#""status":"Bad Request: {\"error\": {\"code\": 400, \"message\": \"Invalid JSON payload\", \"status\": \"INVALID_ARGUMENT\"}}""#,
        );
        let (kind, message) = expect_failed(&decode(&other).unwrap());
        assert_eq!(kind, "provider_error");
        assert!(message.contains("Invalid JSON payload"));

        let rpc = line_with(
            "2",
            r#""status":{"code":8,"message":"quota","status":"RESOURCE_EXHAUSTED"}"#,
        );
        assert_eq!(
            expect_failed(&decode(&rpc).unwrap()),
            ("rate_limit".into(), "RESOURCE_EXHAUSTED: 8: quota".into())
        );
        let code_only = line_with("2", r#""status":{"code":8,"message":"quota"}"#);
        assert_eq!(
            expect_failed(&decode(&code_only).unwrap()),
            ("rate_limit".into(), "RESOURCE_EXHAUSTED: 8: quota".into())
        );
        let invalid = line_with("2", r#""status":{"code":3,"message":"bad"}"#);
        assert_eq!(
            expect_failed(&decode(&invalid).unwrap()),
            ("provider_error".into(), "INVALID_ARGUMENT: 3: bad".into())
        );
        let unknown = line_with("2", r#""status":{"code":99,"message":"?"}"#);
        assert_eq!(
            expect_failed(&decode(&unknown).unwrap()).1,
            "rpc_code_99: 99: ?"
        );
    }

    #[test]
    fn refusals_and_truncation() {
        for reason in ["SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT"] {
            let line = line_with(
                "0",
                &format!(
                    r#""status":"","response":{{"candidates":[{{"finishReason":"{reason}"}}]}}"#
                ),
            );
            let (kind, message) = expect_failed(&decode(&line).unwrap());
            assert_eq!(kind, "refusal");
            assert!(message.contains(reason));
        }
        let blocked = line_with(
            "0",
            r#""status":"","response":{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":"5"}}"#,
        );
        let decoded = decode(&blocked).unwrap();
        assert_eq!(expect_failed(&decoded).0, "refusal");
        assert_eq!(decoded.usage.input_tokens, 5);

        let truncated = line_with(
            "0",
            r#""status":"","response":{"candidates":[{"content":{"parts":[{"text":"{\"name\":\"A"}]},"finishReason":"MAX_TOKENS"}]}"#,
        );
        let (kind, message) = expect_failed(&decode(&truncated).unwrap());
        assert_eq!(kind, "invalid_json");
        assert!(message.contains("cut off by the token limit"));

        let empty = line_with(
            "0",
            r#""status":"","response":{"candidates":[{"content":{"parts":[]},"finishReason":"STOP"}]}"#,
        );
        assert_eq!(
            expect_failed(&decode(&empty).unwrap()).0,
            "no_structured_output"
        );
    }

    #[test]
    fn rows_that_are_not_row_numbers_are_malformed() {
        for row in ["-1", "+1", "one", ""] {
            let line = line_with(row, r#""status":"","response":{"candidates":[]}"#);
            let err = decode(&line).unwrap_err();
            assert_eq!(err.key, None, "{row}");
            assert!(err.reason.contains("batchline_row"), "{}", err.reason);
        }
        let unlabelled = br#"{"status":"","request":{"contents":[]},"response":{"candidates":[]}}"#;
        assert!(decode(unlabelled).unwrap_err().reason.contains("no labels"));
    }

    #[test]
    fn broken_lines_keep_the_row_when_they_can() {
        let wrong_shape = line_with("2", r#""status":"","response":{"candidates":7}"#);
        assert_eq!(decode(&wrong_shape).unwrap_err().key, Some(RowKey::Row(2)));
        let neither = line_with("1", r#""status":"""#);
        assert_eq!(decode(&neither).unwrap_err().key, Some(RowKey::Row(1)));
        assert_eq!(decode(b"{").unwrap_err().key, None);
    }
}
