//! The emulated model: what one request costs and answers, without any HTTP. The four
//! provider emulators call [`run_request`]; a benchmark can call it in process.
//!
//! - **Tokens** are counted with OpenAI's `o200k_base` BPE, which stands in for
//!   Anthropic's and Google's own (unpublished) tokenizers. The prompt is what the model
//!   sees, in this order: tool and answer-schema definitions (their JSON), the system
//!   text, then the messages. Each message costs [`MESSAGE_OVERHEAD`] tokens on top of
//!   its text (role and separators, as OpenAI's chat format documents), and the reply
//!   is primed with [`REPLY_OVERHEAD`] more. The output is the answer text.
//! - **Answers** come from [`crate::answer`]: drawn from the request's own text. When
//!   the answer schema holds several rows (properties `"1"`…`"N"`, each a `$ref` to one
//!   def) and the user text has the `### <k>` headings, each key is answered from its
//!   own row's text only; row fault markers `drop_row`, `invent_row`, `repeat_row` then
//!   change the answer's keys.
//! - **Limits**: an answer longer than the request's max tokens is cut there (finish
//!   reason length); a prompt longer than the model's context window
//!   ([`context_window`]) is an error.
//! - **Caches**: see [`crate::cache`].

use std::sync::LazyLock;

use serde_json::{Map, Value, json};
use tiktoken_rs::CoreBPE;

use crate::answer::{answer_at, answer_for, schema_breaking_answer};
use crate::cache::{
    CacheOutcome, CacheState, FIVE_MINUTES_S, GOOGLE_TTL_S, ONE_HOUR_S, OPENAI_MIN_PREFIX,
    OPENAI_TTL_S, Prefix, PrefixHasher, automatic_prefixes,
};
use crate::common::{RequestFault, content_text, first_half};
use crate::google::field;

/// Tokens each message costs beyond its text.
pub const MESSAGE_OVERHEAD: u64 = 3;
/// Tokens that prime the reply, once per prompt.
pub const REPLY_OVERHEAD: u64 = 3;
/// At most this many `cache_control` breakpoints per Anthropic request.
pub const MAX_BREAKPOINTS: usize = 4;

static BPE: LazyLock<CoreBPE> =
    LazyLock::new(|| tiktoken_rs::o200k_base().expect("the bundled o200k_base BPE loads"));

/// Token ids of `text` under `o200k_base`.
pub fn encode(text: &str) -> Vec<u32> {
    BPE.encode_ordinary(text)
}

/// How many `o200k_base` tokens `text` holds.
pub fn count_tokens(text: &str) -> u64 {
    encode(text).len() as u64
}

/// The first `limit` tokens of `text`, as text (a token cut inside a character loses it).
pub fn first_tokens(text: &str, limit: u64) -> String {
    let ids = encode(text);
    let kept = &ids[..ids.len().min(limit as usize)];
    let bytes = BPE.decode_bytes(kept).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .trim_end_matches('\u{FFFD}')
        .to_string()
}

/// Which provider API a request body is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// OpenAI chat completions (the batch line's `body`).
    OpenAi,
    /// Anthropic Messages (the batch request's `params`).
    Anthropic,
    /// Vertex AI `GenerateContentRequest`.
    Vertex,
    /// Gemini API `GenerateContentRequest`.
    Gemini,
}

/// The context window of `model`, in tokens (providers' model pages, late 2026; unknown
/// models get 128,000).
pub fn context_window(model: &str) -> u64 {
    const TABLE: [(&str, u64); 8] = [
        ("gpt-4.1", 1_047_576),
        ("gpt-4o", 128_000),
        ("gpt-5", 400_000),
        ("o1", 200_000),
        ("o3", 200_000),
        ("o4", 200_000),
        ("claude", 200_000),
        ("gemini", 1_048_576),
    ];
    let name = model.rsplit('/').next().unwrap_or(model);
    TABLE
        .iter()
        .find(|(prefix, _)| name.starts_with(prefix))
        .map_or(128_000, |&(_, window)| window)
}

/// The shortest prefix `model` caches, in tokens. Anthropic (prompt caching docs): 4,096
/// for Opus 4.5 and Haiku 4.5, 2,048 for older Haiku, 1,024 for other Sonnet and Opus.
/// Google (context caching docs): 1,024 for Flash models, 4,096 for Pro. OpenAI: 1,024.
pub fn min_cacheable(api: Api, model: &str) -> u64 {
    let name = model.rsplit('/').next().unwrap_or(model);
    match api {
        Api::Anthropic if name.contains("opus-4-5") || name.contains("haiku-4-5") => 4096,
        Api::Anthropic if name.contains("haiku") => 2048,
        Api::Vertex | Api::Gemini if name.contains("pro") => 4096,
        _ => OPENAI_MIN_PREFIX,
    }
}

/// Token usage of one request, provider neutral. The prompt is
/// `input + cache_read + cache_write_5m + cache_write_1h` tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens neither read from nor written to the cache.
    pub input: u64,
    /// Prompt tokens read from the cache.
    pub cache_read: u64,
    /// Prompt tokens written to the 5-minute cache (Anthropic only).
    pub cache_write_5m: u64,
    /// Prompt tokens written to the 1-hour cache (Anthropic only).
    pub cache_write_1h: u64,
    /// Answer tokens.
    pub output: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Self) {
        self.input += other.input;
        self.cache_read += other.cache_read;
        self.cache_write_5m += other.cache_write_5m;
        self.cache_write_1h += other.cache_write_1h;
        self.output += other.output;
    }
}

impl Usage {
    /// Every prompt token, cached or not.
    pub fn prompt(&self) -> u64 {
        self.input + self.cache_read + self.cache_write_5m + self.cache_write_1h
    }

    /// The usage object in `api`'s own field names.
    pub fn to_provider_json(&self, api: Api) -> Value {
        match api {
            Api::OpenAi => json!({
                "prompt_tokens": self.prompt(),
                "completion_tokens": self.output,
                "total_tokens": self.prompt() + self.output,
                "prompt_tokens_details": {"cached_tokens": self.cache_read, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
            }),
            Api::Anthropic => json!({
                "input_tokens": self.input,
                "output_tokens": self.output,
                "cache_creation_input_tokens": self.cache_write_5m + self.cache_write_1h,
                "cache_read_input_tokens": self.cache_read,
                "cache_creation": {
                    "ephemeral_5m_input_tokens": self.cache_write_5m,
                    "ephemeral_1h_input_tokens": self.cache_write_1h,
                },
                "service_tier": "batch",
            }),
            Api::Vertex | Api::Gemini => {
                let mut usage = json!({
                    "promptTokenCount": self.prompt(),
                    "candidatesTokenCount": self.output,
                    "totalTokenCount": self.prompt() + self.output,
                });
                if self.cache_read > 0 {
                    usage["cachedContentTokenCount"] = json!(self.cache_read);
                }
                usage
            }
        }
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The answer is whole.
    Stop,
    /// Cut at the max tokens (OpenAI `length`, Anthropic `max_tokens`, Google `MAX_TOKENS`).
    Length,
    /// The model refused (no answer text).
    Refusal,
}

/// What the model wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// The answer text: JSON when `structured`, else prose; the refusal text when refused.
    pub text: String,
    /// Whether `text` is (meant as) the structured answer rather than prose (the
    /// `truncate` fault's half answer counts as prose).
    pub structured: bool,
    /// Why it stopped.
    pub finish: Finish,
}

/// Why a request failed, provider neutral (each emulator words it its own way).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The prompt is longer than the context window.
    ContextLength {
        /// Prompt tokens.
        tokens: u64,
        /// The model's window.
        limit: u64,
    },
    /// Rate limited.
    RateLimit,
    /// A server error.
    Server,
}

/// One request's outcome and usage (zero usage when it failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The answer, or why there is none.
    pub outcome: Result<Output, Failure>,
    /// Tokens used.
    pub usage: Usage,
}

/// The last sentence of the system text of a several-rows request.
pub const ROWS_INSTRUCTION: &str = "The user message holds several rows, each after a line \"### <number>\". Answer each row on its own: return one object whose keys are the row numbers and whose values are the answers for those rows.";

/// A part of the prompt, in the order the model sees it.
struct Segment {
    tokens: Vec<u32>,
    /// Anthropic `cache_control` ending here: its lifetime in seconds.
    breakpoint: Option<u64>,
}

/// What [`run_request`] needs from a request body.
struct View {
    segments: Vec<Segment>,
    /// The messages' text: what answers are drawn from and fault markers are found in.
    text: String,
    schema: Option<Value>,
    /// No schema, but the request asks for a JSON object in its text (Anthropic has no
    /// JSON mode: the system prompt asks), so the model writes one as its text.
    json_text: bool,
    max_tokens: Option<u64>,
    keyed: bool,
}

/// What a model answers when asked for any JSON object.
fn any_object_schema() -> Value {
    json!({"type": "object", "properties": {"answer": {"type": "string"}}})
}

fn json_tokens(value: &Value) -> Vec<u32> {
    encode(&value.to_string())
}

/// Tokens of one message: the overhead (role and separators), then its text.
fn message_tokens(role: &str, text: &str) -> Vec<u32> {
    let mut out = encode(role);
    out.resize(MESSAGE_OVERHEAD as usize, 0);
    out.extend(encode(text));
    out
}

/// The `cache_control` lifetime of a block, if it carries one.
fn breakpoint_ttl(block: &Value) -> Result<Option<u64>, String> {
    let Some(control) = block.get("cache_control") else {
        return Ok(None);
    };
    match control.get("ttl").and_then(Value::as_str) {
        None | Some("5m") => Ok(Some(FIVE_MINUTES_S)),
        Some("1h") => Ok(Some(ONE_HOUR_S)),
        Some(other) => Err(format!(
            "cache_control.ttl: Input should be '5m' or '1h', got '{other}'"
        )),
    }
}

fn blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::Array(blocks) => blocks.clone(),
        Value::String(text) => vec![json!({"type": "text", "text": text})],
        _ => Vec::new(),
    }
}

fn anthropic_view(params: &Value) -> Result<View, String> {
    let mut segments = Vec::new();
    for tool in params
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut definition = tool.clone();
        if let Some(map) = definition.as_object_mut() {
            map.remove("cache_control");
        }
        segments.push(Segment {
            tokens: json_tokens(&definition),
            breakpoint: breakpoint_ttl(tool)?,
        });
    }
    for block in params.get("system").map(blocks).unwrap_or_default() {
        segments.push(Segment {
            tokens: encode(&content_text(&json!([block]))),
            breakpoint: breakpoint_ttl(&block)?,
        });
    }
    let messages = params.get("messages").and_then(Value::as_array);
    for message in messages.into_iter().flatten() {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("user");
        let mut first = true;
        for block in message.get("content").map(blocks).unwrap_or_default() {
            let text = content_text(&json!([block]));
            let tokens = if first {
                message_tokens(role, &text)
            } else {
                encode(&text)
            };
            first = false;
            segments.push(Segment {
                tokens,
                breakpoint: breakpoint_ttl(&block)?,
            });
        }
    }
    let breakpoints: Vec<u64> = segments.iter().filter_map(|s| s.breakpoint).collect();
    if breakpoints.len() > MAX_BREAKPOINTS {
        return Err(format!(
            "A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {}.",
            breakpoints.len()
        ));
    }
    if breakpoints
        .windows(2)
        .any(|w| w[0] == FIVE_MINUTES_S && w[1] == ONE_HOUR_S)
    {
        return Err(
            "cache_control: a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block."
                .to_string(),
        );
    }
    let tool = answering_tool(params);
    let system = params.get("system").map(content_text).unwrap_or_default();
    // Structured outputs (`output_config.format`) constrain the text to this schema.
    let output_schema = params.pointer("/output_config/format/schema");
    let schema = tool
        .and_then(|t| t.get("input_schema"))
        .or(output_schema)
        .cloned();
    Ok(View {
        segments,
        text: messages_text(messages),
        json_text: schema.is_none() && system.contains("JSON object"),
        schema,
        max_tokens: params.get("max_tokens").and_then(Value::as_u64),
        keyed: true,
    })
}

/// The tool an Anthropic model answers with: the one `tool_choice` forces, else the first.
pub fn answering_tool(params: &Value) -> Option<&Value> {
    let tools = params.get("tools")?.as_array()?;
    match params.pointer("/tool_choice/name").and_then(Value::as_str) {
        Some(name) => tools
            .iter()
            .find(|tool| tool.get("name").and_then(Value::as_str) == Some(name)),
        None => tools.first(),
    }
}

/// Checks what Anthropic rejects at create about a request's `cache_control` blocks:
/// more than [`MAX_BREAKPOINTS`], an unknown `ttl`, a 1-hour one after a 5-minute one.
pub fn check_cache_control(params: &Value) -> Result<(), String> {
    anthropic_view(params).map(|_| ())
}

fn messages_text(messages: Option<&Vec<Value>>) -> String {
    crate::common::messages_text(messages.map_or(&[][..], Vec::as_slice))
}

fn openai_view(body: &Value) -> View {
    let mut segments = Vec::new();
    let definitions = [body.get("tools"), body.get("response_format")];
    for definition in definitions.into_iter().flatten() {
        segments.push(Segment {
            tokens: json_tokens(definition),
            breakpoint: None,
        });
    }
    let messages = body.get("messages").and_then(Value::as_array);
    for message in messages.into_iter().flatten() {
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or("user");
        let text = content_text(message.get("content").unwrap_or(&Value::Null));
        segments.push(Segment {
            tokens: message_tokens(role, &text),
            breakpoint: None,
        });
    }
    // The system and developer messages are instructions, not the text answers use.
    let user: Vec<Value> = messages
        .into_iter()
        .flatten()
        .filter(|m| {
            !matches!(
                m.get("role").and_then(Value::as_str),
                Some("system" | "developer")
            )
        })
        .cloned()
        .collect();
    View {
        segments,
        text: messages_text(Some(&user)),
        schema: body.get("response_format").and_then(|format| {
            match format.get("type").and_then(Value::as_str) {
                Some("json_object") => Some(any_object_schema()),
                _ => format.pointer("/json_schema/schema").cloned(),
            }
        }),
        json_text: false,
        max_tokens: ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|key| body.get(*key).and_then(Value::as_u64)),
        keyed: body
            .get("prompt_cache_key")
            .and_then(Value::as_str)
            .is_some_and(|key| !key.is_empty()),
    }
}

fn parts_text(content: &Value) -> String {
    field(content, "parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|part| part.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

fn google_view(request: &Value) -> View {
    let mut segments = Vec::new();
    let config = field(request, "generationConfig");
    let schema = config.and_then(crate::google::response_schema);
    let definitions = [field(request, "tools").cloned(), schema.clone()];
    for definition in definitions.iter().flatten() {
        segments.push(Segment {
            tokens: json_tokens(definition),
            breakpoint: None,
        });
    }
    if let Some(system) = field(request, "systemInstruction") {
        segments.push(Segment {
            tokens: encode(&parts_text(system)),
            breakpoint: None,
        });
    }
    let contents = field(request, "contents").and_then(Value::as_array);
    let mut texts = Vec::new();
    for content in contents.into_iter().flatten() {
        let role = field(content, "role")
            .and_then(Value::as_str)
            .unwrap_or("user");
        let text = parts_text(content);
        segments.push(Segment {
            tokens: message_tokens(role, &text),
            breakpoint: None,
        });
        texts.push(text);
    }
    let json_mode = config
        .and_then(|c| field(c, "responseMimeType"))
        .and_then(Value::as_str)
        == Some("application/json");
    View {
        segments,
        text: texts.join("\n"),
        schema: json_mode.then(|| schema.unwrap_or_else(any_object_schema)),
        json_text: false,
        max_tokens: config
            .and_then(|c| field(c, "maxOutputTokens"))
            .and_then(Value::as_u64),
        keyed: true,
    }
}

/// The prompt's prefixes the cache may hold, shortest first.
fn prefixes(api: Api, model: &str, segments: &[Segment], prompt: &[u32]) -> Vec<Prefix> {
    let min = min_cacheable(api, model);
    match api {
        Api::OpenAi => automatic_prefixes(api, model, prompt, min, OPENAI_TTL_S),
        Api::Vertex | Api::Gemini => automatic_prefixes(api, model, prompt, min, GOOGLE_TTL_S),
        Api::Anthropic => {
            let mut hasher = PrefixHasher::new(api, model);
            let mut length = 0;
            let mut out = Vec::new();
            for segment in segments {
                for token in &segment.tokens {
                    hasher.push(*token);
                }
                length += segment.tokens.len() as u64;
                if let Some(ttl_s) = segment.breakpoint
                    && length >= min
                {
                    out.push(Prefix {
                        tokens: length,
                        hash: hasher.hash(),
                        ttl_s,
                    });
                }
            }
            out
        }
    }
}

/// What the model sees of a request body written for `api`.
fn view(api: Api, body: &Value) -> View {
    match api {
        Api::OpenAi => openai_view(body),
        Api::Anthropic => anthropic_view(body).unwrap_or_else(|_| {
            let mut plain = body.clone();
            strip_cache_control(&mut plain);
            anthropic_view(&plain).expect("a body without cache_control is valid")
        }),
        Api::Vertex | Api::Gemini => google_view(body),
    }
}

/// The prompt tokens a request body would report if it ran and succeeded (OpenAI
/// `prompt_tokens`, Anthropic input plus cache tokens, Google `promptTokenCount`),
/// without running it: what the enqueued-token quotas count.
pub fn prompt_tokens(api: Api, body: &Value) -> u64 {
    let segments = view(api, body).segments;
    segments.iter().map(|s| s.tokens.len() as u64).sum::<u64>() + REPLY_OVERHEAD
}

/// Runs one request body (OpenAI `body`, Anthropic `params`, Google `request`) sent to
/// `model` through `api`: its answer or failure and its usage, with the prompt cache
/// `cache` read and written. Fault markers (`[[fault:…]]`) in the messages apply.
///
/// An Anthropic body whose `cache_control` blocks the API would reject at create is
/// answered as if it carried none (the emulator rejects it at create).
pub fn run_request(api: Api, model: &str, body: &Value, cache: &mut CacheState) -> Reply {
    let view = view(api, body);
    let failed = |failure| Reply {
        outcome: Err(failure),
        usage: Usage::default(),
    };
    let prompt: Vec<u32> = view
        .segments
        .iter()
        .flat_map(|s| s.tokens.iter().copied())
        .chain(std::iter::repeat_n(0, REPLY_OVERHEAD as usize))
        .collect();
    let prompt_tokens = prompt.len() as u64;
    let limit = context_window(model);
    let fault = RequestFault::find_all(&view.text)
        .into_iter()
        .find(|f| !f.is_row_fault());
    match fault {
        Some(RequestFault::ProviderError) => {
            return failed(Failure::ContextLength {
                tokens: limit + prompt_tokens,
                limit,
            });
        }
        Some(RequestFault::RateLimit) => return failed(Failure::RateLimit),
        Some(RequestFault::ServerError) => return failed(Failure::Server),
        _ => {}
    }
    if prompt_tokens > limit {
        return failed(Failure::ContextLength {
            tokens: prompt_tokens,
            limit,
        });
    }
    let cached = cache.lookup(&prefixes(api, model, &view.segments, &prompt), view.keyed);
    let CacheOutcome {
        read,
        written_5m,
        written_1h,
    } = cached;
    let (cache_write_5m, cache_write_1h) = if api == Api::Anthropic {
        (written_5m, written_1h)
    } else {
        (0, 0)
    };
    let mut output = answer(&view, fault);
    if output.finish != Finish::Refusal
        && let Some(max) = view.max_tokens
        && count_tokens(&output.text) > max
    {
        output.text = first_tokens(&output.text, max);
        output.finish = Finish::Length;
    }
    Reply {
        usage: Usage {
            input: prompt_tokens - read - cache_write_5m - cache_write_1h,
            cache_read: read,
            cache_write_5m,
            cache_write_1h,
            output: count_tokens(&output.text),
        },
        outcome: Ok(output),
    }
}

fn strip_cache_control(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("cache_control");
            map.values_mut().for_each(strip_cache_control);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_cache_control),
        _ => {}
    }
}

/// The refusal text every provider's model writes.
pub const REFUSAL: &str = "I'm sorry, but I can't help with that request.";

fn answer(view: &View, fault: Option<RequestFault>) -> Output {
    let structured = |text: String, finish| Output {
        text,
        structured: true,
        finish,
    };
    let prose = |text: String| Output {
        text,
        structured: false,
        finish: Finish::Stop,
    };
    let Some(schema) = &view.schema else {
        return match fault {
            Some(RequestFault::Refusal) => Output {
                text: REFUSAL.to_string(),
                structured: false,
                finish: Finish::Refusal,
            },
            Some(RequestFault::Truncate) => Output {
                finish: Finish::Length,
                ..prose(first_half(&prose_answer(&view.text)).to_string())
            },
            _ if view.json_text => prose(answer_text(&any_object_schema(), &view.text)),
            _ => prose(prose_answer(&view.text)),
        };
    };
    let full = || answer_text(schema, &view.text);
    match fault {
        Some(RequestFault::Refusal) => Output {
            text: REFUSAL.to_string(),
            structured: false,
            finish: Finish::Refusal,
        },
        Some(RequestFault::NonJson) => prose(format!("Sure! Here is what I found: {}", full())),
        // Google and OpenAI models write the broken JSON as their text; Anthropic
        // models put it in the tool input.
        Some(RequestFault::SchemaBreak) => structured(
            schema_breaking_answer(schema, &view.text).to_string(),
            Finish::Stop,
        ),
        // The fault's half answer is text (an Anthropic model writes it as a text block),
        // unlike a real cut at max tokens, which an Anthropic tool input shows as far as written.
        Some(RequestFault::Truncate) => Output {
            finish: Finish::Length,
            ..prose(first_half(&full()).to_string())
        },
        _ => structured(full(), Finish::Stop),
    }
}

/// A prose answer: a sentence made of the text's first words.
fn prose_answer(text: &str) -> String {
    let words: Vec<&str> = text
        .split_whitespace()
        .filter(|w| !w.starts_with("[[fault:"))
        .take(12)
        .collect();
    format!(
        "An emulated answer to {} words of input: {}",
        text.split_whitespace().count(),
        words.join(" ")
    )
}

/// The def every row key refers to, when `schema` is a several-rows answer schema:
/// properties `"1"`…`"N"` (decimal numerals), each `{"$ref": <the same def>}`.
fn row_keys(schema: &Value) -> Option<(Vec<u64>, &Value)> {
    let properties = schema.get("properties")?.as_object()?;
    let first = properties.values().next()?;
    let reference = first.get("$ref")?.as_str()?;
    let mut keys = Vec::new();
    for (name, property) in properties {
        let numeral = !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit());
        if !numeral || property.get("$ref").and_then(Value::as_str) != Some(reference) {
            return None;
        }
        keys.push(name.parse().ok()?);
    }
    Some((keys, first))
}

/// The rows of a several-rows user text: each `### <k>` heading line and the text
/// after it, up to the next heading.
pub fn split_rows(text: &str) -> Vec<(u64, String)> {
    let mut rows: Vec<(u64, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        let heading = line
            .strip_prefix("### ")
            .and_then(|k| k.trim().parse::<u64>().ok());
        match (heading, rows.last_mut()) {
            (Some(k), _) => rows.push((k, Vec::new())),
            (None, Some((_, lines))) => lines.push(line),
            (None, None) => {}
        }
    }
    rows.into_iter()
        .map(|(k, lines)| (k, lines.join("\n").trim().to_string()))
        .collect()
}

/// The structured answer's JSON text: one answer for the whole text, or, for a
/// several-rows schema whose rows are all in the text, one per row from that row's text
/// (with the row faults applied; written by hand, since a repeated key cannot live in a map).
fn answer_text(schema: &Value, text: &str) -> String {
    let rows = split_rows(text);
    let Some((keys, row_ref)) = row_keys(schema) else {
        return answer_for(schema, text).to_string();
    };
    let row_text = |k: u64| rows.iter().find(|(n, _)| *n == k).map(|(_, t)| t.as_str());
    if keys.iter().any(|k| row_text(*k).is_none()) {
        return answer_for(schema, text).to_string();
    }
    let mut entries: Vec<(u64, Value)> = Vec::new();
    let mut invented = Vec::new();
    for &k in &keys {
        let own = row_text(k).unwrap_or_default();
        let faults = RequestFault::find_all(own);
        if faults.contains(&RequestFault::DropRow) {
            continue;
        }
        entries.push((k, answer_at(schema, row_ref, own)));
        if faults.contains(&RequestFault::RepeatRow) {
            entries.push((k, answer_at(schema, row_ref, &format!("{own} (again)"))));
        }
        if faults.contains(&RequestFault::InventRow) {
            invented.push(own);
        }
    }
    let next = keys.iter().max().copied().unwrap_or(0) + 1;
    for (i, own) in invented.into_iter().enumerate() {
        entries.push((
            next + i as u64,
            answer_at(schema, row_ref, &format!("{own} (invented)")),
        ));
    }
    let body: Vec<String> = entries
        .iter()
        .map(|(k, value)| format!("\"{k}\":{value}"))
        .collect();
    format!("{{{}}}", body.join(","))
}

/// The JSON value of a structured answer cut short: the longest prefix of `text` that,
/// with its open strings, arrays and objects closed, parses; `{}` if none does.
pub fn close_partial_json(text: &str) -> Value {
    if let Ok(value) = serde_json::from_str(text) {
        return value;
    }
    // Closers needed after each prefix: the open containers, innermost last.
    let mut states: Vec<(usize, bool, String)> = Vec::with_capacity(text.len());
    let (mut stack, mut in_string, mut escaped) = (String::new(), false, false);
    for (i, c) in text.char_indices() {
        states.push((i, in_string, stack.clone()));
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '{' => stack.push('}'),
            '[' => stack.push(']'),
            '}' | ']' => {
                stack.pop();
            }
            _ => {}
        }
    }
    states.push((text.len(), in_string, stack));
    states
        .iter()
        .rev()
        .find_map(|(end, in_string, stack)| {
            let mut candidate = text[..*end].to_string();
            if *in_string {
                candidate.push('"');
            }
            candidate.extend(stack.chars().rev());
            serde_json::from_str::<Map<String, Value>>(&candidate).ok()
        })
        .map_or_else(|| json!({}), Value::Object)
}

#[cfg(test)]
mod tests;
