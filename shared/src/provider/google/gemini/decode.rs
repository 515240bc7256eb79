//! Gemini API batch result-line decoding: `{"key","response"}` or `{"key","error"}`.
//! Inline results (`{"metadata":{"key"},…}`) are accepted too.

use std::borrow::Cow;

use serde::Deserialize;

use crate::provider::decode::{
    Answer, CodeText, Decoded, Malformed, RowKey, Usage, error_type, from_line, optional_borrowed,
};
use crate::provider::google::response::{GenerateContentResponse, response_answer};
use crate::provider::google::wire::rpc_code_name;

#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow, default, deserialize_with = "optional_borrowed")]
    key: Option<Cow<'a, str>>,
    metadata: Option<InlineMetadata>,
    #[serde(borrow)]
    response: Option<GenerateContentResponse<'a>>,
    error: Option<RpcStatus>,
}

#[derive(Deserialize)]
struct InlineMetadata {
    key: Option<String>,
}

/// `{"code","message","details"?}` (google.rpc.Status, `code` a `google.rpc.Code`
/// number); a `status` name, as HTTP error bodies carry, is read when present.
#[derive(Deserialize)]
struct RpcStatus {
    code: Option<CodeText>,
    message: Option<String>,
    status: Option<String>,
}

/// Decodes one line of a Gemini batch responses file.
pub fn decode(line: &[u8]) -> Result<Decoded<'_>, Malformed> {
    let parsed: Line<'_> = from_line(line)
        .map_err(|e| Malformed::unreadable(&e, line, &[&["key"], &["metadata", "key"]]))?;
    let custom_id = match (parsed.key, parsed.metadata.and_then(|m| m.key)) {
        (Some(key), _) => key,
        (None, Some(key)) => Cow::Owned(key),
        (None, None) => {
            return Err(Malformed::new(
                None,
                "the line has no key, so its custom_id is unknown",
            ));
        }
    };
    let (answer, usage) = match (parsed.error, parsed.response) {
        (Some(error), _) => (status_answer(error), Usage::default()),
        (None, Some(response)) => response_answer(response),
        (None, None) => {
            return Err(Malformed::new(
                Some(custom_id.into_owned()),
                "the line has neither a response nor an error",
            ));
        }
    };
    Ok(Decoded {
        key: RowKey::CustomId(custom_id),
        usage,
        answer,
    })
}

/// The error type is the status name, else the name of the numeric code.
fn status_answer(error: RpcStatus) -> Answer<'static> {
    let error_type = error
        .status
        .or(error.code.map(|c| rpc_code_name(&c.0)))
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| error_type::PROVIDER_ERROR.to_string());
    Answer::failed(
        error_type,
        error.message.unwrap_or_else(|| "no message".to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::decode::expect_failed;

    #[test]
    fn success_is_keyed_and_decoded_like_vertex() {
        let line = br#"{"key":"req-7","response":{"candidates":[{"content":{"parts":[{"text":"{\"ok\":true}"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":3,"totalTokenCount":11},"modelVersion":"gemini-2.5-flash"}}"#;
        let decoded = decode(line).unwrap();
        assert!(matches!(
            decoded.key,
            RowKey::CustomId(Cow::Borrowed("req-7"))
        ));
        assert_eq!(
            decoded.usage,
            Usage {
                input_tokens: 8,
                output_tokens: 3,
                ..Usage::default()
            }
        );
        match decoded.answer {
            Answer::Text(text) => assert_eq!(text, r#"{"ok":true}"#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_type_is_the_status_else_the_code_name() {
        let line = br#"{"key":"req-8","error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#;
        let decoded = decode(line).unwrap();
        assert_eq!(decoded.key.custom_id(), Some("req-8"));
        assert_eq!(
            expect_failed(&decoded),
            (
                "RESOURCE_EXHAUSTED".into(),
                "Resource has been exhausted".into()
            )
        );
        let code_only = br#"{"key":"k","error":{"code":3,"message":"bad"}}"#;
        assert_eq!(
            expect_failed(&decode(code_only).unwrap()),
            ("INVALID_ARGUMENT".into(), "bad".into())
        );
        let with_details = br#"{"key":"k","error":{"code":8,"message":"quota","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED"}]}}"#;
        assert_eq!(
            expect_failed(&decode(with_details).unwrap()).0,
            "RESOURCE_EXHAUSTED"
        );
        let as_text = br#"{"key":"k","error":{"code":"13","message":"oops"}}"#;
        assert_eq!(expect_failed(&decode(as_text).unwrap()).0, "INTERNAL");
        let unknown = br#"{"key":"k","error":{"code":99,"message":"?"}}"#;
        assert_eq!(expect_failed(&decode(unknown).unwrap()).0, "rpc_code_99");
        let bare = br#"{"key":"k","error":{"message":"no code"}}"#;
        assert_eq!(expect_failed(&decode(bare).unwrap()).0, "provider_error");
    }

    #[test]
    fn refusal_and_truncation_follow_the_shared_rules() {
        let blocked =
            br#"{"key":"k","response":{"promptFeedback":{"blockReason":"PROHIBITED_CONTENT"}}}"#;
        assert_eq!(expect_failed(&decode(blocked).unwrap()).0, "refusal");
        let truncated = br#"{"key":"k","response":{"candidates":[{"content":{"parts":[{"text":"{"}]},"finishReason":"MAX_TOKENS"}]}}"#;
        assert_eq!(expect_failed(&decode(truncated).unwrap()).0, "invalid_json");
    }

    #[test]
    fn inline_metadata_key_and_missing_key() {
        let inline = br#"{"metadata":{"key":"inline-1"},"response":{"candidates":[{"content":{"parts":[{"text":"{}"}]}}]}}"#;
        assert_eq!(decode(inline).unwrap().key.custom_id(), Some("inline-1"));
        let keyless = br#"{"response":{"candidates":[]}}"#;
        assert_eq!(decode(keyless).unwrap_err().key, None);
        let neither = br#"{"key":"k-2"}"#;
        assert_eq!(decode(neither).unwrap_err().custom_id(), Some("k-2"));
        let wrong_shape = br#"{"key":"k-3","error":"boom"}"#;
        assert_eq!(decode(wrong_shape).unwrap_err().custom_id(), Some("k-3"));
    }
}
