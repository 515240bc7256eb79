//! Vertex AI request-line encoding: JSONL lines `{"request":{GenerateContentRequest}}`.
//!
//! Vertex lines carry no id of their own, so each request is labelled with its row
//! within the part (`labels.batchline_row`); the results map that row back to the
//! custom id through the part's id list. The `GenerateContentRequest` body is shared
//! with the Gemini API encoder: assistant turns become `model`, and system text (the
//! batch's system prompt, then the conversation's system messages) goes to
//! `systemInstruction`, one part per text.

use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::value::{RawValue, to_raw_value};

use crate::build::{append_json, check_params, check_request, serialize_turns, system_texts};
use crate::error::Result;
use crate::model::ProviderKind;
use crate::provider::{Framing, PartLimits, RequestEncoder};
use crate::request::{GenerationParams, Message, OutputSchema, Request};
use crate::schema::google_response_json_schema;

/// The request label that carries a line's row within its part.
pub const ROW_LABEL: &str = "batchline_row";

/// Vertex AI batch inference for Gemini: up to 200,000 requests per job and 1 GB per
/// Cloud Storage input file (Vertex AI "Batch inference with Gemini" quotas page;
/// the file-size figure could not be confirmed and is kept conservative).
pub const LIMITS: PartLimits = PartLimits {
    max_requests: 200_000,
    max_bytes: 1000 * 1000 * 1000,
};

/// Both Google APIs accept temperatures from 0 to 2.
const MAX_TEMPERATURE: f64 = 2.0;

/// The parts of a `GenerateContentRequest` that are the same for every request of
/// a batch, prepared once.
#[derive(Debug)]
pub(crate) struct GoogleRequestTemplate {
    system_prompt: Option<String>,
    /// `{"maxOutputTokens","temperature"?,"responseMimeType","responseJsonSchema"}`
    generation_config: Box<RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    max_output_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    response_mime_type: &'static str,
    response_json_schema: &'a RawValue,
}

impl GoogleRequestTemplate {
    pub(crate) fn new(
        schema: &OutputSchema,
        params: &GenerationParams,
        provider: ProviderKind,
    ) -> Result<Self> {
        check_params(params, provider, MAX_TEMPERATURE)?;
        let response_json_schema = google_response_json_schema(schema, provider)?;
        let generation_config = to_raw_value(&GenerationConfig {
            max_output_tokens: params.max_tokens,
            temperature: params.temperature,
            response_mime_type: "application/json",
            response_json_schema: &response_json_schema,
        })?;
        Ok(Self {
            system_prompt: params.system_prompt.clone(),
            generation_config,
        })
    }

    /// The request body for `request`, after the checks every provider makes;
    /// `row` adds the Vertex row label.
    pub(crate) fn request<'a>(
        &'a self,
        request: &'a Request,
        row: Option<usize>,
    ) -> Result<GenerateContentRequest<'a>> {
        check_request(request)?;
        let system_prompt = self.system_prompt.as_deref();
        let has_system = system_texts(system_prompt, &request.messages)
            .next()
            .is_some();
        Ok(GenerateContentRequest {
            contents: Contents(&request.messages),
            system_instruction: has_system.then_some(SystemInstruction {
                system_prompt,
                messages: &request.messages,
            }),
            generation_config: &self.generation_config,
            labels: row.map(RowLabels),
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GenerateContentRequest<'a> {
    contents: Contents<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstruction<'a>>,
    generation_config: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<RowLabels>,
}

/// `[{"role","parts":[{"text"}]}]` for the user and assistant turns.
struct Contents<'a>(&'a [Message]);

#[derive(Serialize)]
struct Content<'a> {
    role: &'static str,
    parts: [TextPart<'a>; 1],
}

#[derive(Serialize)]
struct TextPart<'a> {
    text: &'a str,
}

impl Serialize for Contents<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_turns(serializer, self.0, "model", |role, text| Content {
            role,
            parts: [TextPart { text }],
        })
    }
}

/// `{"parts":[{"text"},…]}`, one part per system text.
struct SystemInstruction<'a> {
    system_prompt: Option<&'a str>,
    messages: &'a [Message],
}

impl Serialize for SystemInstruction<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Parts<'a>(&'a SystemInstruction<'a>);
        impl Serialize for Parts<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(
                    system_texts(self.0.system_prompt, self.0.messages)
                        .map(|text| TextPart { text }),
                )
            }
        }
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("parts", &Parts(self))?;
        map.end()
    }
}

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

#[derive(Debug)]
pub struct VertexEncoder {
    template: GoogleRequestTemplate,
}

impl VertexEncoder {
    pub fn new(schema: &OutputSchema, params: &GenerationParams) -> Result<Self> {
        Ok(Self {
            template: GoogleRequestTemplate::new(schema, params, ProviderKind::Google)?,
        })
    }
}

#[derive(Serialize)]
struct Line<'a> {
    request: GenerateContentRequest<'a>,
}

impl RequestEncoder for VertexEncoder {
    fn limits(&self) -> PartLimits {
        LIMITS
    }

    fn framing(&self) -> Framing {
        Framing::JSONL
    }

    fn encode(&self, row: usize, request: &Request, out: &mut Vec<u8>) -> Result<()> {
        let line = Line {
            request: self.template.request(request, Some(row))?,
        };
        append_json(&line, true, out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::error::Error;
    use crate::request::Role;
    use serde_json::{Value, json};

    pub(crate) fn schema() -> OutputSchema {
        OutputSchema {
            name: "answer".to_string(),
            schema: json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {"x": {"type": "integer"}},
                "required": ["x"]
            }),
        }
    }

    pub(crate) fn params() -> GenerationParams {
        GenerationParams {
            max_tokens: 256,
            temperature: Some(0.0),
            system_prompt: Some("Extract facts.".to_string()),
        }
    }

    pub(crate) fn conversation() -> Request {
        Request {
            custom_id: "doc-1".to_string(),
            messages: vec![
                Message::new(Role::System, "Be terse."),
                Message::new(Role::User, "Say one"),
                Message::new(Role::Assistant, "one"),
                Message::new(Role::User, "Again"),
            ],
        }
    }

    /// The `GenerateContentRequest` both Google encoders produce for
    /// [`conversation`] under [`params`] (Vertex adds its labels).
    pub(crate) fn expected_request() -> Value {
        json!({
            "contents": [
                {"role": "user", "parts": [{"text": "Say one"}]},
                {"role": "model", "parts": [{"text": "one"}]},
                {"role": "user", "parts": [{"text": "Again"}]}
            ],
            "systemInstruction": {"parts": [{"text": "Extract facts."}, {"text": "Be terse."}]},
            "generationConfig": {
                "maxOutputTokens": 256,
                "temperature": 0.0,
                "responseMimeType": "application/json",
                "responseJsonSchema": {
                    "type": "object",
                    "properties": {"x": {"type": "integer"}},
                    "required": ["x"]
                }
            }
        })
    }

    fn encode(encoder: &VertexEncoder, row: usize, request: &Request) -> Value {
        let mut out = Vec::new();
        encoder.encode(row, request, &mut out).unwrap();
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn line_maps_roles_moves_system_text_and_labels_the_row() {
        let encoder = VertexEncoder::new(&schema(), &params()).unwrap();
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
        let encoder = VertexEncoder::new(&schema(), &params).unwrap();
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
        let encoder = VertexEncoder::new(&schema(), &params()).unwrap();
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
}
