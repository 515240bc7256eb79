//! What a provider's request encoder is ([`RequestEncoder`]), the limits and framing of
//! a provider batch, and the helpers the encoders share. Below the part builder
//! ([`crate::build`]), which drives an encoder without knowing its provider.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::ProviderKind;
use crate::request::{GenerationParams, Message, OutputSchema, Request, Role};

/// How much one provider batch may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartLimits {
    /// Most requests in one batch.
    pub max_requests: usize,
    /// Most bytes of one batch's input, framing included.
    pub max_bytes: usize,
}

/// How request lines are laid out in a provider's batch input: JSONL for most,
/// one JSON document `{"requests":[…]}` for Anthropic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// Written once before the first request.
    pub prefix: &'static [u8],
    /// Written between two requests.
    pub separator: &'static [u8],
    /// Written once after the last request.
    pub suffix: &'static [u8],
}

impl Framing {
    /// One request per line, nothing around them (each encoded line ends with `\n`).
    pub const JSONL: Framing = Framing {
        prefix: b"",
        separator: b"",
        suffix: b"",
    };
}

/// Encodes requests into one provider's batch input. Pure: no I/O, no clock.
pub trait RequestEncoder: Send + Sync + std::fmt::Debug {
    /// How the encoded requests are laid out in a batch.
    fn framing(&self) -> Framing;
    /// Appends the encoding of `request` (row `row` of its part) to `out`. JSONL
    /// encoders end the line with `\n`. On error `out` is left as it was.
    fn encode(&self, row: usize, request: &Request, out: &mut Vec<u8>) -> Result<()>;
}

/// `^[a-zA-Z0-9_-]{1,64}$`: Anthropic custom ids, OpenAI schema names, tool names.
pub(crate) fn is_identifier(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What every provider needs of a request: an id, and a conversation with a user turn.
pub(crate) fn check_request(request: &Request) -> Result<()> {
    let invalid = |reason: &str| Error::InvalidRequest {
        custom_id: request.custom_id.clone(),
        reason: reason.to_string(),
    };
    if request.custom_id.is_empty() {
        return Err(invalid("custom_id is empty"));
    }
    if request.messages.is_empty() {
        return Err(invalid("the conversation has no messages"));
    }
    if !request.messages.iter().any(|m| m.role == Role::User) {
        return Err(invalid("the conversation has no user message"));
    }
    Ok(())
}

/// Rejects generation parameters the provider would refuse for every request.
pub(crate) fn check_params(
    params: &GenerationParams,
    provider: ProviderKind,
    max_temperature: f64,
) -> Result<()> {
    if params.max_tokens == 0 {
        return Err(Error::Config(format!(
            "max_tokens must be at least 1 for {provider}"
        )));
    }
    if let Some(t) = params.temperature
        && !(0.0..=max_temperature).contains(&t)
    {
        return Err(Error::Config(format!(
            "temperature {t} is outside 0..={max_temperature} accepted by {provider}"
        )));
    }
    Ok(())
}

/// Appends `value` as compact JSON (and a newline for JSONL); on error `out` is unchanged.
pub(crate) fn append_json<T: Serialize>(value: &T, newline: bool, out: &mut Vec<u8>) -> Result<()> {
    let start = out.len();
    if let Err(e) = serde_json::to_writer(&mut *out, value) {
        out.truncate(start);
        return Err(e.into());
    }
    if newline {
        out.push(b'\n');
    }
    Ok(())
}

/// Texts that go to a provider's separate system field: the batch's system prompt,
/// then the conversation's system messages, in order.
pub(crate) fn system_texts<'a>(
    system_prompt: Option<&'a str>,
    messages: &'a [Message],
) -> impl Iterator<Item = &'a str> + Clone {
    system_prompt.into_iter().chain(
        messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str()),
    )
}

/// The conversation's user and assistant turns as a JSON array (system messages go to
/// the provider's system field instead), each written by `turn` from the provider's
/// role name (`assistant_role` for the model's turns) and the text.
pub(crate) fn serialize_turns<'a, S: serde::Serializer, T: serde::Serialize>(
    serializer: S,
    messages: &'a [Message],
    assistant_role: &'static str,
    turn: impl Fn(&'static str, &'a str) -> T,
) -> std::result::Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = serializer.serialize_seq(None)?;
    for message in messages {
        let role = match message.role {
            Role::System => continue,
            Role::User => "user",
            Role::Assistant => assistant_role,
        };
        seq.serialize_element(&turn(role, &message.content))?;
    }
    seq.end()
}

/// Rejects a schema name OpenAI and Anthropic would refuse (`^[a-zA-Z0-9_-]{1,64}$`).
pub(crate) fn check_schema_name(schema: &OutputSchema, provider: ProviderKind) -> Result<()> {
    if is_identifier(&schema.name) {
        return Ok(());
    }
    Err(Error::UnsupportedSchema {
        name: schema.name.clone(),
        provider,
        reason: "the schema name must match ^[a-zA-Z0-9_-]{1,64}$".to_string(),
    })
}
