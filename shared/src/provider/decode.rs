//! What a provider's result decoder hands over: one results line's envelope read
//! (borrowing from the line, without building a JSON tree) into a [`Decoded`], or why it
//! could not be read ([`Malformed`]). The result parser ([`crate::results`]) consumes
//! these; it sits above the providers and knows none of them.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Error types batchline assigns itself; provider codes (`context_length_exceeded`,
/// `rate_limit_error`, `RESOURCE_EXHAUSTED`, …) pass through unchanged.
pub mod error_type {
    /// The results line itself could not be read.
    pub const MALFORMED_LINE: &str = "malformed_line";
    /// The answer is not JSON, or was cut off by the token limit.
    pub const INVALID_JSON: &str = "invalid_json";
    /// The answer is JSON but does not match the schema.
    pub const SCHEMA_MISMATCH: &str = "schema_mismatch";
    /// The model answered without the structured part (no content, no tool call).
    pub const NO_STRUCTURED_OUTPUT: &str = "no_structured_output";
    /// The model or the provider's safety system declined to answer.
    pub const REFUSAL: &str = "refusal";
    /// The batch expired before the request ran.
    pub const EXPIRED: &str = "expired";
    /// The batch was cancelled before the request ran.
    pub const CANCELLED: &str = "cancelled";
    /// The provider throttled the request (Vertex status without a code of its own).
    pub const RATE_LIMIT: &str = "rate_limit";
    /// The provider failed the request without a more specific code.
    pub const PROVIDER_ERROR: &str = "provider_error";
    /// The results stream broke before its end.
    pub const READ_ERROR: &str = "read_error";
    /// The answer to a request of several rows left this row out.
    pub const MISSING_ROW: &str = "missing_row";
    /// The answer to a request of several rows answered this row more than once.
    pub const REPEATED_ROW: &str = "repeated_row";
}

/// Token usage of one request, normalised across providers.
///
/// `input_tokens` counts every prompt token, cached or not (Anthropic reports cache
/// reads and writes apart from its `input_tokens`; the decoder adds them back), and the
/// two cache fields say how many of those were read from or written to the provider's
/// prompt cache, so that a cost can price each kind at its own rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// Answer tokens (thinking included where the provider bills it as output).
    pub output_tokens: u64,
    /// Of the prompt tokens, those read from the prompt cache (Anthropic
    /// `cache_read_input_tokens`, OpenAI `prompt_tokens_details.cached_tokens`, Google
    /// `cachedContentTokenCount`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_input_tokens: u64,
    /// Of the prompt tokens, those written to the prompt cache (Anthropic
    /// `cache_creation_input_tokens`; the other providers cache without charging).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_input_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// No token counted either way.
    pub fn is_zero(&self) -> bool {
        self.input_tokens == 0 && self.output_tokens == 0
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.cache_write_input_tokens += other.cache_write_input_tokens;
    }

    /// The usage of a provider that counts cache reads and writes apart from its input
    /// tokens (Anthropic, Bedrock's Converse): they are added back into `input_tokens`.
    pub fn with_cache_apart(input: u64, output: u64, cache_read: u64, cache_write: u64) -> Self {
        Self {
            input_tokens: input + cache_read + cache_write,
            output_tokens: output,
            cached_input_tokens: cache_read,
            cache_write_input_tokens: cache_write,
        }
    }

    /// Prompt tokens neither read from nor written to the cache.
    pub fn uncached_input_tokens(&self) -> u64 {
        self.input_tokens
            .saturating_sub(self.cached_input_tokens + self.cache_write_input_tokens)
    }
}

/// What one provider results line says, before its answer is parsed and validated.
#[derive(Debug, Clone)]
pub struct Decoded<'a> {
    /// Which request of the part the line answers.
    pub key: RowKey<'a>,
    /// Tokens billed for the request.
    pub usage: Usage,
    /// The answer, or why there is none.
    pub answer: Answer<'a>,
}

/// How a results line names its request. The result parser resolves a [`RowKey::Row`]
/// through the part's manifest (its custom_ids in input order), which it always holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowKey<'a> {
    /// The request's custom_id, echoed by the provider.
    CustomId(Cow<'a, str>),
    /// The request's 0-based row within its part (Vertex AI echoes only the row label
    /// the encoder wrote).
    Row(usize),
}

impl RowKey<'_> {
    /// The custom_id when the line named it; `None` for a row number.
    pub fn custom_id(&self) -> Option<&str> {
        match self {
            RowKey::CustomId(id) => Some(id),
            RowKey::Row(_) => None,
        }
    }
}

/// The answer part of a results line.
#[derive(Debug, Clone)]
pub enum Answer<'a> {
    /// JSON text the model wrote (OpenAI message content, Google parts' text).
    Text(Cow<'a, str>),
    /// A JSON value embedded in the line (Anthropic `tool_use` input).
    Embedded(&'a RawValue),
    /// The request produced no answer to parse.
    Failed {
        /// The provider's error code or one of [`error_type`].
        error_type: Cow<'a, str>,
        /// What went wrong, in the provider's words where it gave some.
        message: String,
    },
}

impl<'a> Answer<'a> {
    /// A request without an answer, of `error_type`.
    pub fn failed(error_type: impl Into<Cow<'a, str>>, message: impl Into<String>) -> Self {
        Answer::Failed {
            error_type: error_type.into(),
            message: message.into(),
        }
    }

    /// The model hit its output token limit, so whatever JSON it wrote is incomplete.
    pub fn truncated(signal: &str) -> Self {
        Self::failed(
            error_type::INVALID_JSON,
            format!("{TRUNCATED} ({signal}); raise max_tokens"),
        )
    }
}

/// How the message of an answer cut off by the output token limit begins.
pub const TRUNCATED: &str = "the answer was cut off by the token limit";

/// The error type and message of a decoded failure; panics on an answer (tests only).
#[cfg(test)]
pub(crate) fn expect_failed(decoded: &Decoded<'_>) -> (String, String) {
    match &decoded.answer {
        Answer::Failed {
            error_type,
            message,
        } => (error_type.to_string(), message.clone()),
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A results line whose envelope could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The request, when the part of the line naming it could still be read.
    pub key: Option<RowKey<'static>>,
    /// Why the line could not be read.
    pub reason: String,
}

impl Malformed {
    /// A line of a provider that echoes custom_ids; `custom_id` if it could be read.
    pub fn new(custom_id: Option<String>, reason: impl Into<String>) -> Self {
        Self {
            key: custom_id.map(|id| RowKey::CustomId(Cow::Owned(id))),
            reason: reason.into(),
        }
    }

    /// A line of a provider that echoes row numbers; `row` if it could be read.
    pub fn at_row(row: Option<usize>, reason: impl Into<String>) -> Self {
        Self {
            key: row.map(RowKey::Row),
            reason: reason.into(),
        }
    }

    /// The custom_id the line named, if it named one.
    pub fn custom_id(&self) -> Option<&str> {
        self.key.as_ref().and_then(RowKey::custom_id)
    }

    /// A line serde rejected; `id_paths` name where the request's id may still be
    /// read (object keys from the top: `["custom_id"]`, `["metadata", "key"]`), in a
    /// line of an unexpected shape, or cut off after the id.
    pub(crate) fn unreadable(err: &serde_json::Error, line: &[u8], id_paths: &[&[&str]]) -> Self {
        Self::new(
            string_at(line, id_paths),
            format!("not a readable results line: {err}"),
        )
    }
}

/// A container open at the scan position of [`string_at`].
enum Open<'a> {
    Array,
    /// An object, with its latest key (unescaped bytes as written) and whether the
    /// next string is a key.
    Object {
        key: Option<&'a [u8]>,
        expects_key: bool,
    },
}

/// The first string value of a JSON object line found at one of `paths` (object keys
/// from the top), read by one pass over the bytes without parsing the rest: it works
/// on a line cut off anywhere after that value, and on JSON of an unexpected shape. A
/// value cut off itself, or written with escapes in its key, is not found.
pub(crate) fn string_at(line: &[u8], paths: &[&[&str]]) -> Option<String> {
    let mut open: Vec<Open<'_>> = Vec::new();
    let mut at = 0;
    while at < line.len() {
        match line[at] {
            b'"' => {
                let end = string_end(line, at)?;
                let text = &line[at + 1..end];
                if let Some(Open::Object { key, expects_key }) = open.last_mut() {
                    if *expects_key {
                        *key = Some(text);
                        *expects_key = false;
                    } else if paths.iter().any(|path| open_path_is(&open, path)) {
                        return serde_json::from_slice(&line[at..=end]).ok();
                    }
                }
                at = end;
            }
            b'{' => open.push(Open::Object {
                key: None,
                expects_key: true,
            }),
            b'[' => open.push(Open::Array),
            b'}' | b']' => {
                open.pop();
                if open.is_empty() {
                    return None;
                }
            }
            b',' => {
                if let Some(Open::Object { expects_key, .. }) = open.last_mut() {
                    *expects_key = true;
                }
            }
            _ => {}
        }
        at += 1;
    }
    None
}

/// Whether the keys of the open objects, outermost first, are `path`.
fn open_path_is(open: &[Open<'_>], path: &[&str]) -> bool {
    open.len() == path.len()
        && open.iter().zip(path).all(|(container, name)| {
            matches!(container, Open::Object { key: Some(key), .. } if *key == name.as_bytes())
        })
}

/// The index of the quote that closes the string opening at `start`; `None` when the
/// line ends first.
fn string_end(line: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    while at < line.len() {
        match line[at] {
            b'\\' => at += 2,
            b'"' => return Some(at),
            _ => at += 1,
        }
    }
    None
}

/// The texts joined without separator; borrowed when there is only one (the usual case).
pub(crate) fn joined<'a>(mut texts: impl Iterator<Item = Cow<'a, str>>) -> Option<Cow<'a, str>> {
    let first = texts.next()?;
    Some(texts.fold(first, |mut joined, text| {
        joined.to_mut().push_str(&text);
        joined
    }))
}

/// An error code that some APIs send as a number and others as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CodeText(pub String);

impl<'de> Deserialize<'de> for CodeText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CodeVisitor;
        impl Visitor<'_> for CodeVisitor {
            type Value = CodeText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an error code (string or integer)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CodeText, E> {
                Ok(CodeText(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CodeText, E> {
                Ok(CodeText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CodeText, E> {
                Ok(CodeText(v.to_string()))
            }
        }
        deserializer.deserialize_any(CodeVisitor)
    }
}

/// Deserialises a results line. A line of valid UTF-8 (every provider writes one) is
/// checked once and read as text, so serde_json does not check each string it reads
/// again; any other line is read as bytes, and so accepted or refused as ever.
pub(crate) fn from_line<'a, T: Deserialize<'a>>(line: &'a [u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(line) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(line),
    }
}

/// An optional string borrowed from the line when it has no escapes (serde's own
/// `Option<Cow<str>>` always copies).
pub(crate) fn optional_borrowed<'de: 'a, 'a, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Cow<'a, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Borrowed<'a>>::deserialize(deserializer)?.map(|b| b.0))
}

/// The first element of a JSON array, the others read as a `Vec<T>` would read them
/// (each must be a `T`) but dropped, so that no vector is allocated for them.
pub(crate) fn first_element<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    struct FirstVisitor<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for FirstVisitor<T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // What `Vec`'s visitor expects, so that errors read the same.
            f.write_str("a sequence")
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<T>, A::Error> {
            let first = seq.next_element()?;
            while seq.next_element::<T>()?.is_some() {}
            Ok(first)
        }
    }
    deserializer.deserialize_seq(FirstVisitor(PhantomData))
}

/// A token count as a JSON number or, as Google encodes int64, a digit string.
pub(crate) fn lenient_count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct CountVisitor;
    impl Visitor<'_> for CountVisitor {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a token count")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("negative token count {v}")))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            v.parse()
                .map_err(|_| E::custom(format!("token count {v:?} is not a number")))
        }
    }
    deserializer.deserialize_any(CountVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_as_bytes_read() {
        type Line<'a> = (Option<Cow<'a, str>>, Option<Vec<u64>>);
        let lines: [&[u8]; 5] = [
            br#"[null,[1,2]]"#,
            br#"["a\u00e9",null]"#,
            b"[\"caf\xc3\xa9\",[3]]",
            b"[\"caf\xe9\",[3]]",
            br#"["a",[1,"x"]]"#,
        ];
        for line in lines {
            assert_eq!(
                format!("{:?}", from_line::<Line<'_>>(line)),
                format!("{:?}", serde_json::from_slice::<Line<'_>>(line)),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn first_element_reads_every_element_as_a_vec_does() {
        #[derive(Debug, Deserialize)]
        struct First {
            #[serde(default, deserialize_with = "first_element")]
            items: Option<u8>,
        }
        #[derive(Debug, Deserialize)]
        struct All {
            #[serde(default)]
            items: Vec<u8>,
        }
        for line in [
            r#"{"items":[1,2,3]}"#,
            r#"{"items":[]}"#,
            r#"{}"#,
            r#"{"items":[1,"x"]}"#,
            r#"{"items":null}"#,
            r#"{"items":{"a":1}}"#,
        ] {
            let first = serde_json::from_str::<First>(line).map(|f| f.items);
            let all = serde_json::from_str::<All>(line).map(|a| a.items.first().copied());
            assert_eq!(format!("{first:?}"), format!("{all:?}"), "{line}");
        }
    }

    #[test]
    fn string_at_reads_the_id_of_a_line_cut_after_it() {
        let id: &[&[&str]] = &[&["custom_id"]];
        let line = br#"{"custom_id":"doc-3","response":{"status_code":200,"bo"#;
        assert_eq!(string_at(line, id).as_deref(), Some("doc-3"));
        let escaped = br#"{"id":"x","custom_id":"a\"b\\","resp"#;
        assert_eq!(string_at(escaped, id).as_deref(), Some("a\"b\\"));
        let nested = br#"{"request":{"labels":{"other":"1","batchline_row":"7"}},"respon"#;
        assert_eq!(
            string_at(nested, &[&["request", "labels", "batchline_row"]]).as_deref(),
            Some("7")
        );
        for none in [
            &br#"{"custom_id":"doc-"#[..],
            br#"{"custom_id":7,"x":"y""#,
            br#"{"a":{"custom_id":"deep"},"#,
            br#"[{"custom_id":"in-array"}]"#,
            br#"{"a":"b"}{"custom_id":"after"}"#,
            b"not json",
            b"",
        ] {
            assert_eq!(
                string_at(none, id),
                None,
                "{}",
                String::from_utf8_lossy(none)
            );
        }
    }
}
