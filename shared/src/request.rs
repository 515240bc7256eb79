//! What a caller asks for: conversations, the answer's form (a schema, any JSON object
//! or free text), generation parameters.

use serde::{Deserialize, Serialize};

/// Who said a message. Providers that keep system text apart (Anthropic, Google)
/// get `System` messages moved to their own field by the request encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions to the model.
    System,
    /// The user's turn.
    User,
    /// The model's turn (earlier answers, few-shot examples).
    Assistant,
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks.
    pub role: Role,
    /// What they say, as plain text.
    pub content: String,
}

impl Message {
    /// A message of `role` with `content`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
}

/// One request of a batch: an id unique within the job and the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The caller's id; results carry it back.
    pub custom_id: String,
    /// The conversation, in order.
    pub messages: Vec<Message>,
}

/// The JSON Schema every answer must match, with the name providers want for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputSchema {
    /// A name for the schema (providers want one, e.g. OpenAI's `json_schema.name`).
    pub name: String,
    /// The JSON Schema itself.
    pub schema: serde_json::Value,
}

/// What form every answer of a batch takes, which decides how requests ask for it and
/// how answers are checked.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerFormat {
    /// A JSON value valid against the schema, asked for with the provider's structured
    /// output (OpenAI `json_schema`, Anthropic's forced tool, Google's
    /// `responseJsonSchema`).
    Schema(OutputSchema),
    /// Any JSON object, not validated further (OpenAI `json_object`, Google's JSON MIME
    /// type, [`JSON_OBJECT_INSTRUCTION`] for OpenAI and Anthropic).
    JsonObject,
    /// Free text, returned as the model wrote it.
    Text,
}

/// What JSON-mode requests add to the system prompt: OpenAI refuses `json_object` mode
/// unless a message says "JSON", and Anthropic has no JSON mode but this instruction.
/// Fixed text, so that every request's prefix stays identical for prompt caching.
pub const JSON_OBJECT_INSTRUCTION: &str = "Answer with one JSON object.";

impl AnswerFormat {
    /// The schema answers must match, in [`AnswerFormat::Schema`] mode.
    pub fn schema(&self) -> Option<&OutputSchema> {
        match self {
            AnswerFormat::Schema(schema) => Some(schema),
            AnswerFormat::JsonObject | AnswerFormat::Text => None,
        }
    }

    /// The system prompt OpenAI and Anthropic requests are sent with: `system_prompt`
    /// as it is, followed in JSON mode by [`JSON_OBJECT_INSTRUCTION`] (Google's JSON
    /// MIME type needs no instruction).
    pub fn system_prompt(&self, system_prompt: Option<&str>) -> Option<String> {
        match (self, system_prompt) {
            (AnswerFormat::JsonObject, Some(prompt)) => {
                Some(format!("{prompt}\n\n{JSON_OBJECT_INSTRUCTION}"))
            }
            (AnswerFormat::JsonObject, None) => Some(JSON_OBJECT_INSTRUCTION.to_string()),
            (_, prompt) => prompt.map(str::to_string),
        }
    }
}

impl From<OutputSchema> for AnswerFormat {
    fn from(schema: OutputSchema) -> Self {
        AnswerFormat::Schema(schema)
    }
}

/// Generation parameters shared by every request of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    /// Longest answer, in tokens (default 1024).
    #[serde(default = "GenerationParams::default_max_tokens")]
    pub max_tokens: u32,
    /// Sampling temperature; the provider's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Placed before every conversation; for plain texts it is the instruction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// How the shared prefix of every request (schema and system prompt) is cached.
    #[serde(default)]
    pub prompt_cache: PromptCache,
}

/// Prompt caching of the prefix every request of a batch shares (the schema and the
/// system prompt). Anthropic caches only what a request marks, for the lifetime asked;
/// OpenAI and Google cache long identical prefixes on their own, and OpenAI takes a
/// cache key that routes requests with the same prefix together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PromptCache {
    /// Nothing is marked and no cache key is sent.
    #[serde(rename = "off")]
    Off,
    /// Anthropic's 5-minute cache (writes cost 1.25× input).
    #[serde(rename = "5m")]
    FiveMinutes,
    /// Anthropic's 1-hour cache (writes cost 2× input): batches often run longer
    /// than five minutes, so this is the default.
    #[default]
    #[serde(rename = "1h")]
    OneHour,
}

impl GenerationParams {
    fn default_max_tokens() -> u32 {
        1024
    }
}

impl Default for GenerationParams {
    fn default() -> Self {
        Self {
            max_tokens: Self::default_max_tokens(),
            temperature: None,
            system_prompt: None,
            prompt_cache: PromptCache::default(),
        }
    }
}
