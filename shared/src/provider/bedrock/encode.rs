//! Bedrock batch inference request encoding: JSONL records `{"recordId","modelInput"}`
//! whose `modelInput` is a Converse request, so that one encoder serves every model
//! Bedrock runs in batch (Claude, Amazon Nova, Llama, Mistral).
//!
//! The answer's schema travels as a forced tool (`toolConfig` with `toolChoice.tool`),
//! as for Anthropic; without a schema no tool is sent and the answer is the message's
//! text. System text goes to the top-level `system` blocks, never into `messages`. The
//! record id is the row's `custom_id`, which Bedrock echoes in its output.

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::ProviderKind;
use crate::provider::encode::{
    Framing, PartLimits, RequestEncoder, append_json, check_params, check_request,
    check_schema_name, serialize_turns, system_texts,
};
use crate::request::{AnswerFormat, GenerationParams, Message, OutputSchema, Request};
use crate::schema::Walk;

/// Bedrock's default quotas: 50,000 records per job; the input file quota (1 GB) is
/// above the part size the pipeline caps every provider at.
pub const LIMITS: PartLimits = PartLimits {
    max_requests: 50_000,
    max_bytes: 1_000 * 1000 * 1000,
};

/// Bedrock refuses a job of fewer records than this (a per-model default quota).
pub const MIN_RECORDS: usize = 100;

/// Converse accepts temperatures from 0 to 1.
const MAX_TEMPERATURE: f64 = 1.0;

/// Used when the schema has no top-level `description` of its own.
const TOOL_DESCRIPTION: &str =
    "Record the requested information. The input must match this tool's schema.";

/// Writes Bedrock batch records (Converse requests) for one answer format and
/// parameter set. The model is the job's, not part of a record.
#[derive(Debug)]
pub struct ConverseEncoder {
    inference: InferenceConfig,
    system_prompt: Option<String>,
    /// The forced tool; `None` without a schema.
    tool: Option<ToolConfig>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct InferenceConfig {
    max_tokens: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
}

/// `{"tools":[{"toolSpec":{…}}],"toolChoice":{"tool":{"name"}}}`
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolConfig {
    tools: [Tool; 1],
    tool_choice: ToolChoice,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Tool {
    tool_spec: ToolSpec,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ToolSpec {
    name: String,
    description: String,
    input_schema: InputSchema,
}

#[derive(Debug, Serialize)]
struct InputSchema {
    json: Value,
}

#[derive(Debug, Serialize)]
struct ToolChoice {
    tool: ToolName,
}

#[derive(Debug, Serialize)]
struct ToolName {
    name: String,
}

impl ToolConfig {
    /// The forced tool for `schema`, whose top level must be an object (a tool's input).
    fn new(schema: &OutputSchema) -> Result<Self> {
        check_schema_name(schema, ProviderKind::Bedrock)?;
        if schema.schema.get("type").and_then(Value::as_str) != Some("object") {
            return Err(Walk::new(schema, ProviderKind::Bedrock).error(
                "#",
                "a tool's input schema must be `\"type\": \"object\"` at the top level",
            ));
        }
        let description = schema
            .schema
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or(TOOL_DESCRIPTION);
        Ok(Self {
            tools: [Tool {
                tool_spec: ToolSpec {
                    name: schema.name.clone(),
                    description: description.to_string(),
                    input_schema: InputSchema {
                        json: schema.schema.clone(),
                    },
                },
            }],
            tool_choice: ToolChoice {
                tool: ToolName {
                    name: schema.name.clone(),
                },
            },
        })
    }
}

impl ConverseEncoder {
    /// Translates the schema of `format` into the forced tool once for the batch;
    /// fails on parameters Converse refuses or a schema a tool cannot take.
    pub fn new(format: &AnswerFormat, params: &GenerationParams) -> Result<Self> {
        check_params(params, ProviderKind::Bedrock, MAX_TEMPERATURE)?;
        let tool = format.schema().map(ToolConfig::new).transpose()?;
        Ok(Self {
            inference: InferenceConfig {
                max_tokens: params.max_tokens,
                temperature: params.temperature,
            },
            system_prompt: format.system_prompt(params.system_prompt.as_deref()),
            tool,
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    record_id: &'a str,
    model_input: ModelInput<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelInput<'a> {
    messages: Turns<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<TextBlock<'a>>,
    inference_config: &'a InferenceConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_config: Option<&'a ToolConfig>,
}

/// `{"text": …}`, a Converse content block.
#[derive(Serialize)]
struct TextBlock<'a> {
    text: &'a str,
}

/// The conversation without its system messages, each turn one text block.
struct Turns<'a>(&'a [Message]);

#[derive(Serialize)]
struct Turn<'a> {
    role: &'static str,
    content: [TextBlock<'a>; 1],
}

impl Serialize for Turns<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize_turns(serializer, self.0, "assistant", |role, text| Turn {
            role,
            content: [TextBlock { text }],
        })
    }
}

impl RequestEncoder for ConverseEncoder {
    fn framing(&self) -> Framing {
        Framing::JSONL
    }

    fn encode(&self, _row: usize, request: &Request, out: &mut Vec<u8>) -> Result<()> {
        check_request(request)?;
        if request.custom_id.contains(['\n', '\r']) {
            return Err(Error::InvalidRequest {
                custom_id: request.custom_id.clone(),
                reason: "a Bedrock record id cannot hold a line break".to_string(),
            });
        }
        let record = Record {
            record_id: &request.custom_id,
            model_input: ModelInput {
                messages: Turns(&request.messages),
                system: system_texts(self.system_prompt.as_deref(), &request.messages)
                    .map(|text| TextBlock { text })
                    .collect(),
                inference_config: &self.inference,
                tool_config: self.tool.as_ref(),
            },
        };
        append_json(&record, true, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{PromptCache, Role};
    use serde_json::json;

    fn params(system_prompt: Option<&str>) -> GenerationParams {
        GenerationParams {
            max_tokens: 256,
            temperature: Some(0.2),
            system_prompt: system_prompt.map(str::to_string),
            prompt_cache: PromptCache::Off,
        }
    }

    fn schema() -> OutputSchema {
        OutputSchema {
            name: "invoice".to_string(),
            schema: json!({"type":"object","properties":{"total":{"type":"number"}},"required":["total"]}),
        }
    }

    fn encode(encoder: &ConverseEncoder, request: &Request) -> Value {
        let mut out = Vec::new();
        encoder.encode(3, request, &mut out).unwrap();
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_schema_becomes_the_forced_tool_and_system_text_moves_out() {
        let encoder = ConverseEncoder::new(&schema().into(), &params(Some("Extract."))).unwrap();
        let request = Request {
            custom_id: "inv/7".to_string(),
            messages: vec![
                Message::new(Role::System, "Be exact."),
                Message::new(Role::User, "Total 12.50"),
                Message::new(Role::Assistant, "ok"),
                Message::new(Role::User, "again"),
            ],
        };
        assert_eq!(
            encode(&encoder, &request),
            json!({
                "recordId": "inv/7",
                "modelInput": {
                    "messages": [
                        {"role": "user", "content": [{"text": "Total 12.50"}]},
                        {"role": "assistant", "content": [{"text": "ok"}]},
                        {"role": "user", "content": [{"text": "again"}]}
                    ],
                    "system": [{"text": "Extract."}, {"text": "Be exact."}],
                    "inferenceConfig": {"maxTokens": 256, "temperature": 0.2},
                    "toolConfig": {
                        "tools": [{"toolSpec": {
                            "name": "invoice",
                            "description": TOOL_DESCRIPTION,
                            "inputSchema": {"json": schema().schema}
                        }}],
                        "toolChoice": {"tool": {"name": "invoice"}}
                    }
                }
            })
        );
    }

    #[test]
    fn text_mode_sends_no_tool_and_json_mode_asks_in_the_system_text() {
        let request = Request {
            custom_id: "a".to_string(),
            messages: vec![Message::new(Role::User, "hi")],
        };
        let text = encode(
            &ConverseEncoder::new(&AnswerFormat::Text, &params(None)).unwrap(),
            &request,
        );
        assert_eq!(
            text["modelInput"],
            json!({
                "messages": [{"role": "user", "content": [{"text": "hi"}]}],
                "inferenceConfig": {"maxTokens": 256, "temperature": 0.2}
            })
        );
        let json_mode = encode(
            &ConverseEncoder::new(&AnswerFormat::JsonObject, &params(None)).unwrap(),
            &request,
        );
        assert_eq!(
            json_mode["modelInput"]["system"],
            json!([{"text": crate::request::JSON_OBJECT_INSTRUCTION}])
        );
    }

    #[test]
    fn what_bedrock_would_refuse_is_refused_before_the_batch() {
        let array = OutputSchema {
            name: "rows".to_string(),
            schema: json!({"type": "array"}),
        };
        assert!(ConverseEncoder::new(&array.into(), &params(None)).is_err());
        let hot = GenerationParams {
            temperature: Some(1.5),
            ..params(None)
        };
        assert!(ConverseEncoder::new(&schema().into(), &hot).is_err());
        let encoder = ConverseEncoder::new(&schema().into(), &params(None)).unwrap();
        let mut out = b"kept".to_vec();
        let broken_id = Request {
            custom_id: "a\nb".to_string(),
            messages: vec![Message::new(Role::User, "hi")],
        };
        assert!(encoder.encode(0, &broken_id, &mut out).is_err());
        assert_eq!(out, b"kept");
    }
}
