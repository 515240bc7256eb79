//! Vertex AI request-line encoding: JSONL lines `{"request":{GenerateContentRequest}}`
//! (the body both Google APIs take, see `provider/google/request.rs`).
//!
//! Vertex lines carry no id of their own, so each request is labelled with its row
//! within the part (`labels.batchline_row`); the result parser maps that row back to
//! the custom id through the part's manifest.

use serde::Serialize;
use serde::ser::SerializeMap;

use crate::error::Result;
use crate::model::ProviderKind;
use crate::provider::encode::{Framing, PartLimits, RequestEncoder, append_json};
use crate::provider::google::request::{GenerateContentRequest, GoogleRequestTemplate};
use crate::request::{AnswerFormat, GenerationParams, Request};

/// The request label that carries a line's row within its part.
pub const ROW_LABEL: &str = "batchline_row";

/// Vertex AI batch inference for Gemini: up to 200,000 requests per job and 1 GB per
/// Cloud Storage input file (Vertex AI "Batch inference with Gemini" quotas page;
/// the file-size figure could not be confirmed and is kept conservative).
pub const LIMITS: PartLimits = PartLimits {
    max_requests: 200_000,
    max_bytes: 1000 * 1000 * 1000,
};

/// `{"batchline_row":"<row>"}` (label values are strings).
struct RowLabels(usize);

impl Serialize for RowLabels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct AsString(usize);
        impl Serialize for AsString {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(&self.0)
            }
        }
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(ROW_LABEL, &AsString(self.0))?;
        map.end()
    }
}

/// Encodes requests for Vertex AI, with the schema translated once.
#[derive(Debug)]
pub struct VertexEncoder {
    template: GoogleRequestTemplate,
}

impl VertexEncoder {
    /// Checks `params` and translates the schema of `format` (if any) for the whole
    /// batch.
    pub fn new(format: &AnswerFormat, params: &GenerationParams) -> Result<Self> {
        Ok(Self {
            template: GoogleRequestTemplate::new(format, params, ProviderKind::Vertex)?,
        })
    }
}

#[derive(Serialize)]
struct Line<'a> {
    request: GenerateContentRequest<'a, RowLabels>,
}

impl RequestEncoder for VertexEncoder {
    fn framing(&self) -> Framing {
        Framing::JSONL
    }

    fn encode(&self, row: usize, request: &Request, out: &mut Vec<u8>) -> Result<()> {
        let line = Line {
            request: self.template.request(request, Some(RowLabels(row)))?,
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

    fn encode(encoder: &VertexEncoder, row: usize, request: &Request) -> Value {
        let mut out = Vec::new();
        encoder.encode(row, request, &mut out).unwrap();
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn line_maps_roles_moves_system_text_and_labels_the_row() {
        let encoder = VertexEncoder::new(&schema().into(), &params()).unwrap();
        let mut expected = expected_request();
        expected["labels"] = json!({"batchline_row": "17"});
        assert_eq!(
            encode(&encoder, 17, &conversation()),
            json!({"request": expected})
        );
    }

    #[test]
    fn no_system_text_means_no_system_instruction() {
        let params = GenerationParams {
            system_prompt: None,
            temperature: None,
            ..params()
        };
        let encoder = VertexEncoder::new(&schema().into(), &params).unwrap();
        let request = Request {
            custom_id: "a".to_string(),
            messages: vec![Message::new(Role::User, "hi")],
        };
        let line = encode(&encoder, 0, &request);
        assert_eq!(
            line,
            json!({"request": {
                "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "generationConfig": {
                    "maxOutputTokens": 256,
                    "responseMimeType": "application/json",
                    "responseJsonSchema": expected_request()["generationConfig"]["responseJsonSchema"]
                },
                "labels": {"batchline_row": "0"}
            }})
        );
    }

    #[test]
    fn conversations_without_a_user_turn_are_refused() {
        let encoder = VertexEncoder::new(&schema().into(), &params()).unwrap();
        let mut out = Vec::new();
        for messages in [vec![], vec![Message::new(Role::Assistant, "a")]] {
            let request = Request {
                custom_id: "x".to_string(),
                messages,
            };
            let err = encoder.encode(0, &request, &mut out).unwrap_err();
            assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn text_mode_line_has_no_mime_type_or_schema() {
        let encoder = VertexEncoder::new(&AnswerFormat::Text, &params()).unwrap();
        let request = Request {
            custom_id: "a".to_string(),
            messages: vec![Message::new(Role::User, "hi")],
        };
        assert_eq!(
            encode(&encoder, 3, &request),
            json!({"request": {
                "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "systemInstruction": {"parts": [{"text": "Extract facts."}]},
                "generationConfig": {"maxOutputTokens": 256, "temperature": 0.0},
                "labels": {"batchline_row": "3"}
            }})
        );
    }
}
