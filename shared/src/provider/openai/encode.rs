//! OpenAI request-line encoding: one `/v1/chat/completions` call per JSONL line.
//!
//! Reasoning models (o1*, o3*, o4*, gpt-5*, also as `ft:` fine-tunes) refuse
//! `max_tokens` and any non-default `temperature`: they get `max_completion_tokens`
//! (which also covers their hidden reasoning tokens, so a small budget can end in
//! `finish_reason: "length"`) and no temperature at all. System messages are sent as
//! `system`; OpenAI treats them as `developer` messages for reasoning models.
//!
//! Prompt caching is automatic at OpenAI for an identical prefix of 1,024 tokens or
//! more, so each body puts what every request of the batch shares first: the schema
//! (`response_format`, which OpenAI places ahead of the messages) and the batch's
//! system prompt as the first message, the row's own turns last. Unless
//! [`PromptCache::Off`], each body also carries a `prompt_cache_key` derived from that
//! shared part, which routes the batch's requests to the same cache.

use serde::Serialize;
use serde::ser::SerializeSeq;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::schema::openai_response_format;
use crate::error::Result;
use crate::model::ProviderKind;
use crate::provider::encode::{
    Framing, PartLimits, RequestEncoder, append_json, check_params, check_request,
};
use crate::request::{AnswerFormat, GenerationParams, Message, PromptCache, Request, Role};

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
/// `json_schema` response format, `json_object`, or none for free text) for one
/// model, answer format and parameter set.
#[derive(Debug)]
pub struct OpenAiEncoder {
    model: String,
    reasoning: bool,
    max_tokens: u32,
    temperature: Option<f64>,
    /// The batch's system prompt (with the JSON instruction in JSON mode).
    system_prompt: Option<String>,
    /// `json_schema` or `json_object`; `None` for free text.
    response_format: Option<Box<RawValue>>,
    /// `bl-` and 16 hex digits, or `None` when prompt caching is off.
    prompt_cache_key: Option<String>,
}

impl OpenAiEncoder {
    /// Translates the schema of `format` once for the batch; fails on parameters
    /// OpenAI refuses or a schema strict mode cannot express.
    pub fn new(model: &str, format: &AnswerFormat, params: &GenerationParams) -> Result<Self> {
        check_params(params, ProviderKind::OpenAi, MAX_TEMPERATURE)?;
        let reasoning = is_reasoning_model(model);
        if reasoning && params.temperature.is_some() {
            tracing::warn!(
                model,
                "temperature is not sent: OpenAI reasoning models refuse it"
            );
        }
        let response_format = match format {
            AnswerFormat::Schema(schema) => Some(openai_response_format(schema)?),
            AnswerFormat::JsonObject => Some(RawValue::from_string(
                r#"{"type":"json_object"}"#.to_string(),
            )?),
            AnswerFormat::Text => None,
        };
        let system_prompt = format.system_prompt(params.system_prompt.as_deref());
        let prompt_cache_key = (params.prompt_cache != PromptCache::Off).then(|| {
            prompt_cache_key(
                model,
                system_prompt.as_deref(),
                format.schema().map_or("", |schema| schema.name.as_str()),
                response_format.as_deref().map_or("", RawValue::get),
            )
        });
        Ok(Self {
            model: model.to_string(),
            reasoning,
            max_tokens: params.max_tokens,
            temperature: if reasoning { None } else { params.temperature },
            system_prompt,
            response_format,
            prompt_cache_key,
        })
    }
}

/// The `prompt_cache_key` of a batch: `bl-` and the first 16 hex digits of a SHA-256
/// over what every request shares (model, system prompt, schema name and the
/// response format, each empty without a schema), each field length-prefixed so that no two different sets of
/// fields hash the same bytes. SHA-256 rather than `DefaultHasher`, whose output may
/// change between Rust versions: the same batch spec keeps the same key.
///
/// `prompt_cache_key` is an optional string field of the Chat Completions body
/// ("used by OpenAI to cache responses for similar requests"; it replaces `user` for
/// that purpose). The API reference gives it no length limit of its own, unlike its
/// sibling `safety_identifier` (at most 64 characters); 19 characters stays well
/// inside either.
fn prompt_cache_key(
    model: &str,
    system_prompt: Option<&str>,
    schema_name: &str,
    response_format: &str,
) -> String {
    let mut hasher = Sha256::new();
    for field in [
        model,
        system_prompt.unwrap_or(""),
        schema_name,
        response_format,
    ] {
        hasher.update((field.len() as u64).to_le_bytes());
        hasher.update(field.as_bytes());
    }
    hasher.update([u8::from(system_prompt.is_some())]);
    let digest = hasher.finalize();
    format!("bl-{}", hex::encode(&digest[..8]))
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
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_cache_key: Option<&'a str>,
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
                response_format: self.response_format.as_deref(),
                prompt_cache_key: self.prompt_cache_key.as_deref(),
            },
        };
        append_json(&line, true, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::request::OutputSchema;
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
        encode_as(&schema().into(), model, params, request)
    }

    fn encode_as(
        format: &AnswerFormat,
        model: &str,
        params: &GenerationParams,
        request: &Request,
    ) -> Value {
        let encoder = OpenAiEncoder::new(model, format, params).unwrap();
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
            prompt_cache: PromptCache::Off,
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
            prompt_cache: PromptCache::Off,
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

    fn cache_key(model: &str, schema: &OutputSchema, params: &GenerationParams) -> Option<String> {
        let encoder = OpenAiEncoder::new(model, &schema.clone().into(), params).unwrap();
        let mut keys = ["a", "b"].map(|id| {
            let request = Request {
                custom_id: id.to_string(),
                messages: vec![Message::new(Role::User, format!("row {id}"))],
            };
            let mut out = Vec::new();
            encoder.encode(0, &request, &mut out).unwrap();
            let line: Value = serde_json::from_slice(&out).unwrap();
            line["body"]
                .get("prompt_cache_key")
                .map(|key| key.as_str().unwrap().to_string())
        });
        assert_eq!(
            keys[0], keys[1],
            "every request of an encoder has the same key"
        );
        keys[0].take()
    }

    fn cached_params(system_prompt: &str) -> GenerationParams {
        GenerationParams {
            system_prompt: Some(system_prompt.to_string()),
            ..GenerationParams::default()
        }
    }

    #[test]
    fn prompt_cache_key_is_stable_and_follows_the_shared_prefix() {
        let key = cache_key("gpt-4o", &schema(), &cached_params("Extract facts.")).unwrap();
        assert_eq!(key.len(), 19, "{key}");
        assert!(key.starts_with("bl-"), "{key}");
        assert!(key[3..].bytes().all(|b| b.is_ascii_hexdigit()), "{key}");
        // The same inputs give the same key in every build: the key is a SHA-256.
        assert_eq!(key, "bl-94e236959693aa48");
        let five_minutes = GenerationParams {
            prompt_cache: PromptCache::FiveMinutes,
            ..cached_params("Extract facts.")
        };
        assert_eq!(
            cache_key("gpt-4o", &schema(), &five_minutes).as_deref(),
            Some(key.as_str()),
            "the TTL is Anthropic's; OpenAI's key does not depend on it"
        );
        let other_schema = OutputSchema {
            name: "other".to_string(),
            ..schema()
        };
        let other_body = OutputSchema {
            schema: json!({"type":"object","properties":{"y":{"type":"integer"}},"required":["y"]}),
            ..schema()
        };
        for (model, schema, params) in [
            ("gpt-4o", other_schema, cached_params("Extract facts.")),
            ("gpt-4o", other_body, cached_params("Extract facts.")),
            ("gpt-4o", schema(), cached_params("Extract names.")),
            ("gpt-4o", schema(), GenerationParams::default()),
            ("gpt-4o-mini", schema(), cached_params("Extract facts.")),
        ] {
            let other = cache_key(model, &schema, &params).unwrap();
            assert_ne!(
                other, key,
                "{model} {} {:?}",
                schema.name, params.system_prompt
            );
        }
    }

    #[test]
    fn prompt_cache_off_sends_no_key() {
        let params = GenerationParams {
            prompt_cache: PromptCache::Off,
            ..cached_params("Extract facts.")
        };
        assert_eq!(cache_key("gpt-4o", &schema(), &params), None);
    }

    #[test]
    fn the_shared_prefix_comes_first_and_the_row_last() {
        let line = encode_one("gpt-4o", &cached_params("Extract facts."), &conversation());
        let messages = line["body"]["messages"].as_array().unwrap();
        assert_eq!(
            messages.first().unwrap(),
            &json!({"role": "system", "content": "Extract facts."})
        );
        assert_eq!(
            messages.last().unwrap(),
            &json!({"role": "user", "content": "Again"})
        );
        assert_eq!(line["body"]["response_format"], response_format());
    }

    #[test]
    fn refused_requests_leave_the_buffer_unchanged() {
        let encoder =
            OpenAiEncoder::new("gpt-4o", &schema().into(), &GenerationParams::default()).unwrap();
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
            let err = OpenAiEncoder::new("gpt-4o", &schema().into(), &params).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err}");
        }
    }

    fn text_params() -> GenerationParams {
        GenerationParams {
            max_tokens: 300,
            temperature: Some(0.2),
            system_prompt: Some("Summarise.".to_string()),
            prompt_cache: PromptCache::Off,
        }
    }

    fn one_text() -> Request {
        Request {
            custom_id: "doc-1".to_string(),
            messages: vec![Message::new(Role::User, "Some text")],
        }
    }

    #[test]
    fn text_mode_sends_no_response_format() {
        let line = encode_as(
            &AnswerFormat::Text,
            "gpt-4o-mini",
            &text_params(),
            &one_text(),
        );
        assert_eq!(
            line,
            json!({
                "custom_id": "doc-1",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "gpt-4o-mini",
                    "messages": [
                        {"role": "system", "content": "Summarise."},
                        {"role": "user", "content": "Some text"}
                    ],
                    "max_tokens": 300,
                    "temperature": 0.2
                }
            })
        );
    }

    #[test]
    fn json_mode_asks_for_a_json_object_and_says_json() {
        let line = encode_as(
            &AnswerFormat::JsonObject,
            "gpt-4o-mini",
            &text_params(),
            &one_text(),
        );
        assert_eq!(
            line["body"],
            json!({
                "model": "gpt-4o-mini",
                "messages": [
                    {"role": "system", "content": "Summarise.\n\nAnswer with one JSON object."},
                    {"role": "user", "content": "Some text"}
                ],
                "max_tokens": 300,
                "temperature": 0.2,
                "response_format": {"type": "json_object"}
            })
        );
        let params = GenerationParams {
            system_prompt: None,
            ..text_params()
        };
        let line = encode_as(&AnswerFormat::JsonObject, "o3-mini", &params, &one_text());
        assert_eq!(
            line["body"]["messages"],
            json!([
                {"role": "system", "content": "Answer with one JSON object."},
                {"role": "user", "content": "Some text"}
            ])
        );
    }

    #[test]
    fn each_answer_format_has_its_own_cache_key() {
        let params = cached_params("Extract facts.");
        let key = |format: &AnswerFormat| {
            let line = encode_as(format, "gpt-4o", &params, &one_text());
            line["body"]["prompt_cache_key"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let keys = [
            key(&schema().into()),
            key(&AnswerFormat::JsonObject),
            key(&AnswerFormat::Text),
        ];
        assert_eq!(keys[0], "bl-94e236959693aa48", "schema jobs keep their key");
        assert_ne!(keys[0], keys[1]);
        assert_ne!(keys[1], keys[2]);
        assert_ne!(keys[0], keys[2]);
    }
}
