//! OpenAI request-line encoding: one `/v1/chat/completions` call per JSONL line.
//!
//! Reasoning models (o1*, o3*, o4*, gpt-5*, also as `ft:` fine-tunes) refuse
//! `max_tokens` and any non-default `temperature`: they get `max_completion_tokens`
//! (which also covers their hidden reasoning tokens, so a small budget can end in
//! `finish_reason: "length"`) and no temperature at all. System messages are sent as
//! `system`; OpenAI treats them as `developer` messages for reasoning models.

use serde::Serialize;
use serde::ser::SerializeSeq;
use serde_json::value::RawValue;

use super::schema::openai_response_format;
use crate::error::Result;
use crate::model::ProviderKind;
use crate::provider::encode::{
    Framing, PartLimits, RequestEncoder, append_json, check_params, check_request,
};
use crate::request::{GenerationParams, Message, OutputSchema, Request, Role};

/// The endpoint every line and the batch itself name.
pub const ENDPOINT: &str = "/v1/chat/completions";

/// OpenAI Batch API: 50,000 requests and 200 MB per input file.
pub const LIMITS: PartLimits = PartLimits {
    max_requests: 50_000,
    max_bytes: 200 * 1000 * 1000,
};

/// OpenAI accepts temperatures from 0 to 2.
const MAX_TEMPERATURE: f64 = 2.0;

/// Whether `model` is a reasoning model (see the module documentation).
pub fn is_reasoning_model(model: &str) -> bool {
    let base = model.strip_prefix("ft:").unwrap_or(model);
    ["o1", "o3", "o4", "gpt-5"]
        .iter()
        .any(|family| base.starts_with(family))
}

/// Writes OpenAI Batch API request lines (`/v1/chat/completions` bodies with a strict
/// `json_schema` response format) for one model, schema and parameter set.
#[derive(Debug)]
pub struct OpenAiEncoder {
    model: String,
    reasoning: bool,
    max_tokens: u32,
    temperature: Option<f64>,
    system_prompt: Option<String>,
    response_format: Box<RawValue>,
}

impl OpenAiEncoder {
    /// Translates `schema` once for the batch; fails on parameters OpenAI refuses or a
    /// schema strict mode cannot express.
    pub fn new(model: &str, schema: &OutputSchema, params: &GenerationParams) -> Result<Self> {
        check_params(params, ProviderKind::OpenAi, MAX_TEMPERATURE)?;
        let reasoning = is_reasoning_model(model);
        if reasoning && params.temperature.is_some() {
            tracing::warn!(
                model,
                "temperature is not sent: OpenAI reasoning models refuse it"
            );
        }
        Ok(Self {
            model: model.to_string(),
            reasoning,
            max_tokens: params.max_tokens,
            temperature: if reasoning { None } else { params.temperature },
            system_prompt: params.system_prompt.clone(),
            response_format: openai_response_format(schema)?,
        })
    }
}

#[derive(Serialize)]
struct Line<'a> {
    custom_id: &'a str,
    method: &'static str,
    url: &'static str,
    body: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    messages: ChatMessages<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    response_format: &'a RawValue,
}

/// The batch's system prompt, then the conversation as it is.
struct ChatMessages<'a> {
    system_prompt: Option<&'a str>,
    messages: &'a [Message],
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

impl Serialize for ChatMessages<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let len = self.messages.len() + usize::from(self.system_prompt.is_some());
        let mut seq = serializer.serialize_seq(Some(len))?;
        if let Some(content) = self.system_prompt {
            seq.serialize_element(&ChatMessage {
                role: "system",
                content,
            })?;
        }
        for message in self.messages {
            seq.serialize_element(&ChatMessage {
                role: match message.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                },
                content: &message.content,
            })?;
        }
        seq.end()
    }
}

impl RequestEncoder for OpenAiEncoder {
    fn framing(&self) -> Framing {
        Framing::JSONL
    }

    fn encode(&self, _row: usize, request: &Request, out: &mut Vec<u8>) -> Result<()> {
        check_request(request)?;
        let (max_tokens, max_completion_tokens) = if self.reasoning {
            (None, Some(self.max_tokens))
        } else {
            (Some(self.max_tokens), None)
        };
        let line = Line {
            custom_id: &request.custom_id,
            method: "POST",
            url: ENDPOINT,
            body: Body {
                model: &self.model,
                messages: ChatMessages {
                    system_prompt: self.system_prompt.as_deref(),
                    messages: &request.messages,
                },
                max_tokens,
                max_completion_tokens,
                temperature: self.temperature,
                response_format: &self.response_format,
            },
        };
        append_json(&line, true, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use serde_json::{Value, json};

    fn schema() -> OutputSchema {
        OutputSchema {
            name: "answer".to_string(),
            schema: json!({"type":"object","properties":{"x":{"type":"integer"}},"required":["x"]}),
        }
    }

    fn response_format() -> Value {
        json!({"type":"json_schema","json_schema":{"name":"answer","strict":true,"schema":{
            "type":"object","properties":{"x":{"type":"integer"}},"required":["x"],"additionalProperties":false
        }}})
    }

    fn conversation() -> Request {
        Request {
            custom_id: "doc-1".to_string(),
            messages: vec![
                Message::new(Role::System, "Be terse."),
                Message::new(Role::User, "Say \"one\"\n"),
                Message::new(Role::Assistant, "one"),
                Message::new(Role::User, "Again"),
            ],
        }
    }

    fn encode_one(model: &str, params: &GenerationParams, request: &Request) -> Value {
        let encoder = OpenAiEncoder::new(model, &schema(), params).unwrap();
        let mut out = Vec::new();
        encoder.encode(0, request, &mut out).unwrap();
        assert_eq!(out.last(), Some(&b'\n'), "a JSONL line ends with a newline");
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn chat_model_line_is_exact() {
        let params = GenerationParams {
            max_tokens: 300,
            temperature: Some(0.2),
            system_prompt: Some("Extract facts.".to_string()),
            ..GenerationParams::default()
        };
        let line = encode_one("gpt-4o-mini", &params, &conversation());
        assert_eq!(
            line,
            json!({
                "custom_id": "doc-1",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": "system", "content": "Extract facts."},
                        {"role": "system", "content": "Be terse."},
                        {"role": "user", "content": "Say \"one\"\n"},
                        {"role": "assistant", "content": "one"},
                        {"role": "user", "content": "Again"}
                    ],
                    "max_tokens": 300,
                    "temperature": 0.2,
                    "response_format": response_format()
                }
            })
        );
    }

    #[test]
    fn reasoning_models_get_max_completion_tokens_and_no_temperature() {
        let params = GenerationParams {
            max_tokens: 4000,
            temperature: Some(0.7),
            system_prompt: None,
            ..GenerationParams::default()
        };
        let request = Request {
            custom_id: "r".to_string(),
            messages: vec![Message::new(Role::User, "hi")],
        };
        for model in [
            "o1",
            "o3-mini",
            "o4-mini",
            "gpt-5",
            "gpt-5-nano",
            "ft:o4-mini:org::x",
        ] {
            let line = encode_one(model, &params, &request);
            assert_eq!(
                line["body"],
                json!({
                    "model": model,
                    "messages": [{"role": "user", "content": "hi"}],
                    "max_completion_tokens": 4000,
                    "response_format": response_format()
                }),
                "{model}"
            );
        }
        for model in ["gpt-4o", "gpt-4.1-mini", "omni-moderation"] {
            assert!(!is_reasoning_model(model), "{model}");
        }
    }

    #[test]
    fn refused_requests_leave_the_buffer_unchanged() {
        let encoder =
            OpenAiEncoder::new("gpt-4o", &schema(), &GenerationParams::default()).unwrap();
        let mut out = b"earlier line\n".to_vec();
        for request in [
            Request {
                custom_id: "empty".into(),
                messages: vec![],
            },
            Request {
                custom_id: "no-user".into(),
                messages: vec![
                    Message::new(Role::System, "s"),
                    Message::new(Role::Assistant, "a"),
                ],
            },
        ] {
            let err = encoder.encode(0, &request, &mut out).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidRequest { custom_id, .. } if *custom_id == request.custom_id),
                "{err}"
            );
            assert_eq!(out, b"earlier line\n");
        }
    }

    #[test]
    fn out_of_range_parameters_are_refused_up_front() {
        for params in [
            GenerationParams {
                temperature: Some(2.5),
                ..Default::default()
            },
            GenerationParams {
                temperature: Some(f64::NAN),
                ..Default::default()
            },
            GenerationParams {
                max_tokens: 0,
                ..Default::default()
            },
        ] {
            let err = OpenAiEncoder::new("gpt-4o", &schema(), &params).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
        }
    }
}
