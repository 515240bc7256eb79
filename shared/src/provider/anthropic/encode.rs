//! Anthropic request encoding: one JSON document `{"requests":[…]}` whose items are
//! `{"custom_id","params":{Messages API body}}`.
//!
//! The answer's schema travels as `output_config.format` for the models that take it
//! ([`supports_output_config`]) and as a forced tool for the others (and for a schema
//! outside the subset `output_config` accepts, which the forced tool still takes).
//! Without a schema neither is sent: a free-text answer is the message's text, and in
//! JSON mode the system prompt ends with [`crate::request::JSON_OBJECT_INSTRUCTION`]
//! (Anthropic has no JSON mode).
//! System text (the batch's system
//! prompt and any system messages, in order, joined by a blank line) goes to the
//! top-level `system` field, never into `messages`.
//!
//! Prompt caching (anything but [`crate::request::PromptCache::Off`]): Anthropic caches in the order
//! tools → system → messages, and only up to blocks marked with `cache_control`. The
//! forced tool (when there is one) carries a breakpoint, and the system text is sent as one text block
//! (the same text as without caching) carrying the same breakpoint, so both cover the
//! prefix every request of the batch shares; the rows' own turns come after. With
//! caching off the request is as it always was: `system` a plain string, nothing
//! marked.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;

use super::schema::{
    AnthropicTool, CacheControl, anthropic_cached_tool, anthropic_output_config,
    supports_output_config,
};
use crate::error::{Error, Result};
use crate::model::ProviderKind;
use crate::provider::encode::{
    Framing, PartLimits, RequestEncoder, append_json, check_params, check_request, is_identifier,
    serialize_turns, system_texts,
};
use crate::request::{AnswerFormat, GenerationParams, Message, Request};

/// Message Batches: 100,000 requests and 256 MB per batch.
pub const LIMITS: PartLimits = PartLimits {
    max_requests: 100_000,
    max_bytes: 256 * 1000 * 1000,
};

/// The batch is one JSON document, not JSONL.
pub const FRAMING: Framing = Framing {
    prefix: br#"{"requests":["#,
    separator: b",",
    suffix: b"]}",
};

/// Anthropic accepts temperatures from 0 to 1.
const MAX_TEMPERATURE: f64 = 1.0;

/// Writes Anthropic Message Batches requests (the schema as `output_config` or a forced
/// tool, nothing without a schema) for one model, answer format and parameter set.
#[derive(Debug)]
pub struct AnthropicEncoder {
    model: String,
    max_tokens: u32,
    temperature: Option<f64>,
    system_prompt: Option<String>,
    /// The breakpoint for the system block; a forced tool already carries it.
    cache_control: Option<CacheControl>,
    /// How the schema travels; `None` without a schema.
    structure: Option<Structure>,
}

/// How a schema travels, translated once for the batch.
#[derive(Debug)]
enum Structure {
    /// `output_config`: the answer is the message's text.
    OutputConfig(Box<RawValue>),
    /// A forced tool: the answer is its input.
    ForcedTool(AnthropicTool),
}

impl AnthropicEncoder {
    /// Translates the schema of `format` once for the batch: into `output_config` when
    /// `model` takes it and the schema fits its subset, else into the forced tool (with
    /// its cache breakpoint unless `params.prompt_cache` is off). Fails on parameters
    /// Anthropic refuses or a schema neither can take.
    pub fn new(model: &str, format: &AnswerFormat, params: &GenerationParams) -> Result<Self> {
        check_params(params, ProviderKind::Anthropic, MAX_TEMPERATURE)?;
        let cache_control = CacheControl::for_cache(params.prompt_cache);
        let structure = match format.schema() {
            Some(schema) if supports_output_config(model) => {
                match anthropic_output_config(schema) {
                    Ok(config) => Some(Structure::OutputConfig(config)),
                    // The forced tool takes any object schema: worse than constrained
                    // decoding, better than refusing a job older batchline ran.
                    Err(err) => {
                        tracing::info!(model, %err, "schema outside the output_config subset; using a forced tool");
                        Some(Structure::ForcedTool(anthropic_cached_tool(
                            schema,
                            cache_control,
                        )?))
                    }
                }
            }
            Some(schema) => Some(Structure::ForcedTool(anthropic_cached_tool(
                schema,
                cache_control,
            )?)),
            None => None,
        };
        Ok(Self {
            model: model.to_string(),
            max_tokens: params.max_tokens,
            temperature: params.temperature,
            system_prompt: format.system_prompt(params.system_prompt.as_deref()),
            cache_control,
            structure,
        })
    }

    /// The forced tool, when the schema travels as one.
    fn tool(&self) -> Option<&AnthropicTool> {
        match &self.structure {
            Some(Structure::ForcedTool(tool)) => Some(tool),
            _ => None,
        }
    }
}

#[derive(Serialize)]
struct Item<'a> {
    custom_id: &'a str,
    params: Params<'a>,
}

#[derive(Serialize)]
struct Params<'a> {
    model: &'a str,
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<System<'a>>,
    messages: Turns<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<&'a RawValue>,
}

/// The top-level `system` field: a plain string, or (with caching on) text blocks
/// whose first, the batch's system prompt, carries the cache breakpoint.
#[derive(Serialize)]
#[serde(untagged)]
enum System<'a> {
    Text(Cow<'a, str>),
    Blocks(Vec<SystemBlock<'a>>),
}

/// `{"type":"text","text","cache_control"?}`
#[derive(Serialize)]
struct SystemBlock<'a> {
    r#type: &'static str,
    text: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<CacheControl>,
}

impl<'a> System<'a> {
    /// The batch's system prompt and the conversation's own system messages. With
    /// caching on, the prompt (the same in every request) is a block of its own with
    /// the breakpoint, and the request's own system text follows it unmarked: marking
    /// text that differs per request would pay a cache write for every request.
    fn new(
        system_prompt: Option<&'a str>,
        messages: &'a [Message],
        cache_control: Option<CacheControl>,
    ) -> Option<Self> {
        let Some(cache_control) = cache_control else {
            return joined_system(system_prompt, messages).map(System::Text);
        };
        let block = |text, cache_control| SystemBlock {
            r#type: "text",
            text,
            cache_control,
        };
        let blocks: Vec<SystemBlock<'a>> = system_prompt
            .map(|prompt| block(Cow::Borrowed(prompt), Some(cache_control)))
            .into_iter()
            .chain(joined_system(None, messages).map(|own| block(own, None)))
            .collect();
        (!blocks.is_empty()).then_some(System::Blocks(blocks))
    }
}

/// The conversation without its system messages.
struct Turns<'a>(&'a [Message]);

#[derive(Serialize)]
struct Turn<'a> {
    role: &'static str,
    content: &'a str,
}

impl Serialize for Turns<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_turns(serializer, self.0, "assistant", |role, content| Turn {
            role,
            content,
        })
    }
}

/// The system texts as one string, borrowed when there is only one.
fn joined_system<'a>(
    system_prompt: Option<&'a str>,
    messages: &'a [Message],
) -> Option<Cow<'a, str>> {
    let mut texts = system_texts(system_prompt, messages);
    let first = texts.next()?;
    let rest: Vec<&str> = texts.collect();
    if rest.is_empty() {
        return Some(Cow::Borrowed(first));
    }
    let mut joined = first.to_string();
    for text in rest {
        joined.push_str("\n\n");
        joined.push_str(text);
    }
    Some(Cow::Owned(joined))
}

impl RequestEncoder for AnthropicEncoder {
    fn framing(&self) -> Framing {
        FRAMING
    }

    fn encode(&self, _row: usize, request: &Request, out: &mut Vec<u8>) -> Result<()> {
        if !is_identifier(&request.custom_id) {
            return Err(Error::InvalidRequest {
                custom_id: request.custom_id.clone(),
                reason: "Anthropic custom ids must match ^[a-zA-Z0-9_-]{1,64}$".to_string(),
            });
        }
        check_request(request)?;
        let item = Item {
            custom_id: &request.custom_id,
            params: Params {
                model: &self.model,
                max_tokens: self.max_tokens,
                temperature: self.temperature,
                system: System::new(
                    self.system_prompt.as_deref(),
                    &request.messages,
                    self.cache_control,
                ),
                messages: Turns(&request.messages),
                tools: self.tool().map(|tool| &*tool.tools),
                tool_choice: self.tool().map(|tool| &*tool.tool_choice),
                output_config: match &self.structure {
                    Some(Structure::OutputConfig(config)) => Some(config),
                    _ => None,
                },
            },
        };
        append_json(&item, false, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{OutputSchema, PromptCache, Role};
    use serde_json::{Value, json};

    /// A model without `output_config`: the schema travels as a forced tool.
    const TOOL_MODEL: &str = "claude-opus-4-1";
    /// A model with `output_config`.
    const OUTPUT_CONFIG_MODEL: &str = "claude-sonnet-4-5";

    /// An encoder with prompt caching off: the requests as they were before caching.
    fn encoder(system_prompt: Option<&str>, temperature: Option<f64>) -> AnthropicEncoder {
        cached_encoder(system_prompt, temperature, PromptCache::Off)
    }

    fn cached_encoder(
        system_prompt: Option<&str>,
        temperature: Option<f64>,
        prompt_cache: PromptCache,
    ) -> AnthropicEncoder {
        let schema = OutputSchema {
            name: "answer".to_string(),
            schema: json!({"type":"object","properties":{"x":{"type":"integer"}},"required":["x"]}),
        };
        let params = GenerationParams {
            max_tokens: 512,
            temperature,
            system_prompt: system_prompt.map(str::to_string),
            prompt_cache,
        };
        AnthropicEncoder::new(TOOL_MODEL, &schema.into(), &params).unwrap()
    }

    fn encode(encoder: &AnthropicEncoder, request: &Request) -> Value {
        let mut out = Vec::new();
        encoder.encode(0, request, &mut out).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    fn tools() -> Value {
        json!([{
            "name": "answer",
            "description": "Record the requested information. The input must match this tool's schema.",
            "input_schema": {"type":"object","properties":{"x":{"type":"integer"}},"required":["x"]}
        }])
    }

    #[test]
    fn system_text_moves_to_the_top_level_field() {
        let request = Request {
            custom_id: "doc_1".to_string(),
            messages: vec![
                Message::new(Role::System, "Be terse."),
                Message::new(Role::User, "Say one"),
                Message::new(Role::Assistant, "one"),
                Message::new(Role::System, "Only digits."),
                Message::new(Role::User, "Again"),
            ],
        };
        let item = encode(&encoder(Some("Extract facts."), Some(0.5)), &request);
        assert_eq!(
            item,
            json!({
                "custom_id": "doc_1",
                "params": {
                    "model": "claude-opus-4-1",
                    "max_tokens": 512,
                    "temperature": 0.5,
                    "system": "Extract facts.\n\nBe terse.\n\nOnly digits.",
                    "messages": [
                        {"role": "user", "content": "Say one"},
                        {"role": "assistant", "content": "one"},
                        {"role": "user", "content": "Again"}
                    ],
                    "tools": tools(),
                    "tool_choice": {"type": "tool", "name": "answer"}
                }
            })
        );
    }

    #[test]
    fn no_system_text_means_no_system_field() {
        let request = Request {
            custom_id: "a".to_string(),
            messages: vec![Message::new(Role::User, "hi")],
        };
        let item = encode(&encoder(None, None), &request);
        assert_eq!(
            item["params"],
            json!({
                "model": "claude-opus-4-1",
                "max_tokens": 512,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": tools(),
                "tool_choice": {"type": "tool", "name": "answer"}
            })
        );
    }

    fn cached_tools(ttl: &str) -> Value {
        let mut tools = tools();
        tools[0]["cache_control"] = json!({"type": "ephemeral", "ttl": ttl});
        tools
    }

    fn system_conversation() -> Request {
        Request {
            custom_id: "doc_1".to_string(),
            messages: vec![
                Message::new(Role::System, "Be terse."),
                Message::new(Role::User, "Say one"),
            ],
        }
    }

    /// The batch's prompt is the same in every request and carries the breakpoint; the
    /// conversation's own system text follows it unmarked.
    #[test]
    fn caching_marks_the_batch_system_prompt_and_the_tool() {
        for (cache, ttl) in [
            (PromptCache::OneHour, "1h"),
            (PromptCache::FiveMinutes, "5m"),
        ] {
            let encoder = cached_encoder(Some("Extract facts."), None, cache);
            let item = encode(&encoder, &system_conversation());
            assert_eq!(
                item["params"],
                json!({
                    "model": "claude-opus-4-1",
                    "max_tokens": 512,
                    "system": [{
                        "type": "text",
                        "text": "Extract facts.",
                        "cache_control": {"type": "ephemeral", "ttl": ttl}
                    }, {
                        "type": "text",
                        "text": "Be terse."
                    }],
                    "messages": [{"role": "user", "content": "Say one"}],
                    "tools": cached_tools(ttl),
                    "tool_choice": {"type": "tool", "name": "answer"}
                }),
                "{cache:?}"
            );
        }
    }

    #[test]
    fn caching_without_system_text_marks_only_the_tool() {
        let request = Request {
            custom_id: "a".to_string(),
            messages: vec![Message::new(Role::User, "hi")],
        };
        let item = encode(&cached_encoder(None, None, PromptCache::OneHour), &request);
        assert_eq!(item["params"].get("system"), None);
        assert_eq!(item["params"]["tools"], cached_tools("1h"));
        // Without a batch prompt, the conversation's own system text is not marked.
        let item = encode(
            &cached_encoder(None, None, PromptCache::OneHour),
            &system_conversation(),
        );
        assert_eq!(
            item["params"]["system"],
            json!([{"type": "text", "text": "Be terse."}])
        );
    }

    #[test]
    fn caching_off_leaves_the_request_byte_for_byte_as_before() {
        let encoder = cached_encoder(Some("Extract facts."), Some(0.5), PromptCache::Off);
        let mut out = Vec::new();
        encoder.encode(0, &system_conversation(), &mut out).unwrap();
        let expected = concat!(
            r#"{"custom_id":"doc_1","params":{"model":"claude-opus-4-1","max_tokens":512,"#,
            r#""temperature":0.5,"system":"Extract facts.\n\nBe terse.","#,
            r#""messages":[{"role":"user","content":"Say one"}],"#,
            r#""tools":[{"name":"answer","description":"Record the requested information. "#,
            r#"The input must match this tool's schema.","input_schema":{"type":"object","#,
            r#""properties":{"x":{"type":"integer"}},"required":["x"]}}],"#,
            r#""tool_choice":{"type":"tool","name":"answer"}}}"#
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn custom_ids_outside_the_rule_are_refused_by_name() {
        let encoder = encoder(None, None);
        for id in ["has space", "doc.1", "", &"a".repeat(65)] {
            let request = Request {
                custom_id: id.to_string(),
                messages: vec![Message::new(Role::User, "hi")],
            };
            let mut out = Vec::new();
            let err = encoder.encode(0, &request, &mut out).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidRequest { custom_id, .. } if custom_id == id),
                "{err}"
            );
            assert!(err.to_string().contains("^[a-zA-Z0-9_-]{1,64}$"), "{err}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn temperature_above_one_is_refused() {
        let schema = OutputSchema {
            name: "s".into(),
            schema: json!({"type":"object"}),
        };
        let params = GenerationParams {
            temperature: Some(1.5),
            ..Default::default()
        };
        assert!(matches!(
            AnthropicEncoder::new("claude", &schema.into(), &params),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn framed_items_make_one_json_document() {
        let encoder = encoder(None, None);
        let mut body = FRAMING.prefix.to_vec();
        for (i, id) in ["a", "b"].iter().enumerate() {
            if i > 0 {
                body.extend_from_slice(FRAMING.separator);
            }
            let request = Request {
                custom_id: id.to_string(),
                messages: vec![Message::new(Role::User, "hi")],
            };
            encoder.encode(i, &request, &mut body).unwrap();
        }
        body.extend_from_slice(FRAMING.suffix);
        let document: Value = serde_json::from_slice(&body).unwrap();
        let ids: Vec<&str> = document["requests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["custom_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b"]);
    }

    fn unstructured_encoder(format: &AnswerFormat, prompt_cache: PromptCache) -> AnthropicEncoder {
        let params = GenerationParams {
            max_tokens: 512,
            temperature: None,
            system_prompt: Some("Summarise.".to_string()),
            prompt_cache,
        };
        AnthropicEncoder::new(TOOL_MODEL, format, &params).unwrap()
    }

    #[test]
    fn text_mode_sends_no_tool() {
        let encoder = unstructured_encoder(&AnswerFormat::Text, PromptCache::Off);
        let mut out = Vec::new();
        encoder.encode(0, &system_conversation(), &mut out).unwrap();
        let expected = concat!(
            r#"{"custom_id":"doc_1","params":{"model":"claude-opus-4-1","max_tokens":512,"#,
            r#""system":"Summarise.\n\nBe terse.","#,
            r#""messages":[{"role":"user","content":"Say one"}]}}"#
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn json_mode_instructs_in_the_system_prompt_without_a_tool() {
        let encoder = unstructured_encoder(&AnswerFormat::JsonObject, PromptCache::Off);
        let item = encode(&encoder, &system_conversation());
        assert_eq!(
            item["params"],
            json!({
                "model": "claude-opus-4-1",
                "max_tokens": 512,
                "system": "Summarise.\n\nAnswer with one JSON object.\n\nBe terse.",
                "messages": [{"role": "user", "content": "Say one"}]
            })
        );
        // With caching on, the batch's system block alone carries the breakpoint.
        let encoder = unstructured_encoder(&AnswerFormat::JsonObject, PromptCache::OneHour);
        let item = encode(&encoder, &system_conversation());
        assert_eq!(
            item["params"]["system"],
            json!([{
                "type": "text",
                "text": "Summarise.\n\nAnswer with one JSON object.",
                "cache_control": {"type": "ephemeral", "ttl": "1h"}
            }, {
                "type": "text",
                "text": "Be terse."
            }])
        );
        assert_eq!(item["params"].get("tools"), None);
    }

    fn output_config_encoder(schema: Value, prompt_cache: PromptCache) -> AnthropicEncoder {
        let schema = OutputSchema {
            name: "answer".to_string(),
            schema,
        };
        let params = GenerationParams {
            max_tokens: 512,
            temperature: Some(0.5),
            system_prompt: Some("Extract facts.".to_string()),
            prompt_cache,
        };
        AnthropicEncoder::new(OUTPUT_CONFIG_MODEL, &schema.into(), &params).unwrap()
    }

    /// Claude 4.5 and later: the translated schema in `output_config`, no tool.
    #[test]
    fn newer_models_get_output_config_byte_for_byte() {
        let schema = json!({
            "type": "object",
            "properties": {"x": {"type": "integer", "minimum": 0}},
            "required": ["x"]
        });
        let encoder = output_config_encoder(schema, PromptCache::Off);
        let mut out = Vec::new();
        encoder.encode(0, &system_conversation(), &mut out).unwrap();
        let expected = concat!(
            r#"{"custom_id":"doc_1","params":{"model":"claude-sonnet-4-5","max_tokens":512,"#,
            r#""temperature":0.5,"system":"Extract facts.\n\nBe terse.","#,
            r#""messages":[{"role":"user","content":"Say one"}],"#,
            r#""output_config":{"format":{"type":"json_schema","schema":{"type":"object","#,
            r#""required":["x"],"properties":{"x":{"type":"integer","description":"{minimum: 0}"}},"#,
            r#""additionalProperties":false}}}}}"#
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    /// Without a tool, the batch's system block alone carries the cache breakpoint.
    #[test]
    fn output_config_with_caching_marks_the_system_prompt() {
        let schema = json!({"type": "object", "properties": {"x": {"type": "integer"}}});
        let encoder = output_config_encoder(schema, PromptCache::OneHour);
        let item = encode(&encoder, &system_conversation());
        assert_eq!(
            item["params"],
            json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 512,
                "temperature": 0.5,
                "system": [{
                    "type": "text",
                    "text": "Extract facts.",
                    "cache_control": {"type": "ephemeral", "ttl": "1h"}
                }, {
                    "type": "text",
                    "text": "Be terse."
                }],
                "messages": [{"role": "user", "content": "Say one"}],
                "output_config": {"format": {"type": "json_schema", "schema": {
                    "type": "object",
                    "properties": {"x": {"type": "integer"}},
                    "additionalProperties": false
                }}}
            })
        );
    }

    /// A schema outside the `output_config` subset still goes out, as the forced tool.
    #[test]
    fn a_schema_outside_the_subset_falls_back_to_the_forced_tool() {
        let recursive = json!({
            "type": "object",
            "properties": {"children": {"type": "array", "items": {"$ref": "#"}}},
        });
        let encoder = output_config_encoder(recursive.clone(), PromptCache::Off);
        let item = encode(&encoder, &system_conversation());
        assert_eq!(item["params"].get("output_config"), None);
        assert_eq!(item["params"]["tools"][0]["input_schema"], recursive);
        assert_eq!(
            item["params"]["tool_choice"],
            json!({"type": "tool", "name": "answer"})
        );
    }
}
