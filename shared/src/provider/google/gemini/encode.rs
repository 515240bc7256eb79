//! Gemini API batch-mode request-line encoding: JSONL lines
//! `{"key":"<custom_id>","request":{GenerateContentRequest}}`, the request body being
//! the one Vertex AI gets (see `provider/google/request.rs`) without labels.

use serde::Serialize;

use crate::error::Result;
use crate::model::ProviderKind;
use crate::provider::encode::{Framing, PartLimits, RequestEncoder, append_json};
use crate::provider::google::request::{GenerateContentRequest, GoogleRequestTemplate};
use crate::request::{AnswerFormat, GenerationParams, Request};

/// Gemini API batch mode takes input files up to 2 GB (Files API limit); it
/// documents no request count, so 100,000 per batch is a conservative choice.
pub const LIMITS: PartLimits = PartLimits {
    max_requests: 100_000,
    max_bytes: 2 * 1000 * 1000 * 1000,
};

/// Encodes requests for the Gemini API, with the schema translated once.
#[derive(Debug)]
pub struct GeminiEncoder {
    template: GoogleRequestTemplate,
}

impl GeminiEncoder {
    /// Checks `params` and translates the schema of `format` (if any) for the whole
    /// batch.
    pub fn new(format: &AnswerFormat, params: &GenerationParams) -> Result<Self> {
        Ok(Self {
            template: GoogleRequestTemplate::new(format, params, ProviderKind::Gemini)?,
        })
    }
}

#[derive(Serialize)]
struct Line<'a> {
    key: &'a str,
    request: GenerateContentRequest<'a>,
}

impl RequestEncoder for GeminiEncoder {
    fn framing(&self) -> Framing {
        Framing::JSONL
    }

    fn encode(&self, _row: usize, request: &Request, out: &mut Vec<u8>) -> Result<()> {
        let line = Line {
            key: &request.custom_id,
            request: self.template.request(request, None)?,
        };
        append_json(&line, true, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::provider::google::request::tests::{conversation, expected_request, params, schema};
    use crate::request::{Message, Role};
    use serde_json::{Value, json};

    #[test]
    fn line_carries_the_key_and_the_unlabelled_request() {
        let encoder = GeminiEncoder::new(&schema().into(), &params()).unwrap();
        let mut out = Vec::new();
        encoder.encode(5, &conversation(), &mut out).unwrap();
        assert_eq!(out.last(), Some(&b'\n'));
        let line: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line, json!({"key": "doc-1", "request": expected_request()}));
    }

    #[test]
    fn only_system_messages_is_not_a_conversation() {
        let encoder = GeminiEncoder::new(&schema().into(), &params()).unwrap();
        let request = Request {
            custom_id: "sys-only".to_string(),
            messages: vec![Message::new(Role::System, "s")],
        };
        let mut out = Vec::new();
        let err = encoder.encode(0, &request, &mut out).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidRequest { custom_id, .. } if custom_id == "sys-only"),
            "{err}"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn text_and_json_modes_send_no_schema() {
        let mut expected = expected_request();
        let config = expected["generationConfig"].as_object_mut().unwrap();
        config.remove("responseJsonSchema");
        for (format, mime_type) in [
            (AnswerFormat::JsonObject, Some("application/json")),
            (AnswerFormat::Text, None),
        ] {
            let mut expected = expected.clone();
            let config = expected["generationConfig"].as_object_mut().unwrap();
            match mime_type {
                Some(mime_type) => config.insert("responseMimeType".into(), json!(mime_type)),
                None => config.remove("responseMimeType"),
            };
            let encoder = GeminiEncoder::new(&format, &params()).unwrap();
            let mut out = Vec::new();
            encoder.encode(0, &conversation(), &mut out).unwrap();
            let line: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(
                line,
                json!({"key": "doc-1", "request": expected}),
                "{format:?}"
            );
        }
    }
}
