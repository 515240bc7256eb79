//! The `GenerateContentRequest` body both Google APIs take in their batch input:
//! assistant turns become `model`, and system text (the batch's system prompt, then
//! the conversation's system messages) goes to `systemInstruction`, one part per text.

use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::value::{RawValue, to_raw_value};

use super::schema::google_response_json_schema;
use crate::error::Result;
use crate::model::ProviderKind;
use crate::provider::encode::{check_params, check_request, serialize_turns, system_texts};
use crate::request::{AnswerFormat, GenerationParams, Message, Request};

/// Both Google APIs accept temperatures from 0 to 2.
const MAX_TEMPERATURE: f64 = 2.0;

/// The parts of a `GenerateContentRequest` that are the same for every request of
/// a batch, prepared once.
#[derive(Debug)]
pub(crate) struct GoogleRequestTemplate {
    system_prompt: Option<String>,
    /// `{"maxOutputTokens","temperature"?,"responseMimeType"?,"responseJsonSchema"?}`
    generation_config: Box<RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig<'a> {
    max_output_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    /// `application/json` for a schema or any JSON object; absent for free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    response_mime_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_json_schema: Option<&'a RawValue>,
}

impl GoogleRequestTemplate {
    pub(crate) fn new(
        format: &AnswerFormat,
        params: &GenerationParams,
        provider: ProviderKind,
    ) -> Result<Self> {
        check_params(params, provider, MAX_TEMPERATURE)?;
        let response_json_schema = match format.schema() {
            Some(schema) => Some(google_response_json_schema(schema, provider)?),
            None => None,
        };
        let generation_config = to_raw_value(&GenerationConfig {
            max_output_tokens: params.max_tokens,
            temperature: params.temperature,
            response_mime_type: match format {
                AnswerFormat::Schema(_) | AnswerFormat::JsonObject => Some("application/json"),
                AnswerFormat::Text => None,
            },
            response_json_schema: response_json_schema.as_deref(),
        })?;
        Ok(Self {
            system_prompt: params.system_prompt.clone(),
            generation_config,
        })
    }

    /// The request body for `request`, after the checks every provider makes, with
    /// `labels` (Vertex AI's) if any.
    ///
    /// Prompt caching: Vertex AI and the Gemini API cache repeated prefixes implicitly,
    /// so nothing is sent for [`crate::request::PromptCache`] and the setting is
    /// ignored here. What makes the cache hit is that the shared part is identical in
    /// every request of the batch: `systemInstruction` starts with the batch's system
    /// prompt, taken as it is from the template, and `generationConfig` (with the
    /// translated schema) is serialized once in [`GoogleRequestTemplate::new`] and
    /// copied byte for byte; only the row's own turns (and Vertex AI's per-row
    /// labels, which are not part of the prompt) differ.
    pub(crate) fn request<'a, L: Serialize>(
        &'a self,
        request: &'a Request,
        labels: Option<L>,
    ) -> Result<GenerateContentRequest<'a, L>> {
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
            labels,
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct GenerateContentRequest<'a, L = ()> {
    contents: Contents<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system_instruction: Option<SystemInstruction<'a>>,
    generation_config: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<L>,
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

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::request::{OutputSchema, Role};

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
            ..GenerationParams::default()
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
}
