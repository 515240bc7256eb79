//! Wire details Vertex AI and the Gemini API share: int64 counts sent as strings, the
//! `{code, message}` error object, and batch tags carried in a display name.

use serde::{Deserialize, Deserializer};
use url::form_urlencoded;

use crate::provider::contract::BatchTags;
use crate::provider::http::{Page, Paging};

/// Display names carrying tags start with this, then the tags URL-form-encoded.
const TAGGED_PREFIX: &str = "batchline?";

/// A Google int64, sent as a JSON string (tolerating a number); missing or bad is 0.
pub fn int64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Int64 {
        Text(String),
        Number(u64),
    }
    Ok(match Option::<Int64>::deserialize(deserializer)? {
        Some(Int64::Text(text)) => text.parse().unwrap_or(0),
        Some(Int64::Number(n)) => n,
        None => 0,
    })
}

/// The canonical `google.rpc.Code` names, indexed by their number.
const RPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The name of a `google.rpc.Code` given as its number (`"3"` is `INVALID_ARGUMENT`);
/// a number outside the canonical codes reads `rpc_code_<n>`, and a code that is
/// already a name is kept as it is.
pub fn rpc_code_name(code: &str) -> String {
    match code.trim().parse::<i64>() {
        Ok(number) => usize::try_from(number)
            .ok()
            .and_then(|index| RPC_CODE_NAMES.get(index))
            .map_or_else(|| format!("rpc_code_{number}"), |name| name.to_string()),
        Err(_) => code.to_string(),
    }
}

/// `google.rpc.Status` as it appears in jobs and operations.
#[derive(Debug, Clone, Deserialize)]
pub struct RpcStatus {
    #[serde(default)]
    pub code: Option<i64>,
    #[serde(default)]
    pub message: Option<String>,
}

impl RpcStatus {
    /// `RESOURCE_EXHAUSTED` (code 8): a quota, not the requests, stopped the job.
    pub fn is_quota(&self) -> bool {
        self.code == Some(8)
    }

    pub fn describe(&self) -> String {
        match (&self.message, self.code) {
            (Some(message), Some(code)) => format!("{message} (code {code})"),
            (Some(message), None) => message.clone(),
            (None, Some(code)) => format!("error code {code}"),
            (None, None) => "unspecified error".to_string(),
        }
    }
}

/// How both APIs page their batch lists: 100 a page, the next page by its token.
pub const PAGING: Paging<'static> = Paging {
    query: &[("pageSize", "100")],
    cursor: "pageToken",
};

/// A Google list answer: the entries under the list's own name (`batchPredictionJobs`,
/// `operations`, Cloud Storage's `items`) and the next page's token (empty on the last).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenPage<T> {
    #[serde(
        default = "Vec::new",
        alias = "batchPredictionJobs",
        alias = "operations"
    )]
    items: Vec<T>,
    next_page_token: Option<String>,
}

impl<T: for<'de> Deserialize<'de>> Page for TokenPage<T> {
    type Item = T;

    fn next_cursor(&self) -> Option<String> {
        self.next_page_token.clone().filter(|t| !t.is_empty())
    }

    fn into_items(self) -> Vec<T> {
        self.items
    }
}

/// A display name that carries `tags` so that a batch can be found again.
pub fn tagged_display_name(tags: &BatchTags) -> String {
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(tags.iter())
        .finish();
    format!("{TAGGED_PREFIX}{encoded}")
}

/// The tags in a display name written by [`tagged_display_name`]; none for any other.
pub fn tags_from_display_name(name: &str) -> BatchTags {
    name.strip_prefix(TAGGED_PREFIX)
        .map(|encoded| {
            form_urlencoded::parse(encoded.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_name_round_trips_awkward_tags() {
        let tags: BatchTags = [("job", "a&b=c d/é"), ("part", "0")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let name = tagged_display_name(&tags);
        assert!(name.starts_with("batchline?"));
        assert_eq!(tags_from_display_name(&name), tags);
        assert!(tags_from_display_name("someone else's batch").is_empty());
    }

    #[test]
    fn rpc_codes_read_as_their_names() {
        assert_eq!(rpc_code_name("0"), "OK");
        assert_eq!(rpc_code_name("3"), "INVALID_ARGUMENT");
        assert_eq!(rpc_code_name("8"), "RESOURCE_EXHAUSTED");
        assert_eq!(rpc_code_name("16"), "UNAUTHENTICATED");
        assert_eq!(rpc_code_name("17"), "rpc_code_17");
        assert_eq!(rpc_code_name("99"), "rpc_code_99");
        assert_eq!(rpc_code_name("-1"), "rpc_code_-1");
        assert_eq!(rpc_code_name("ABORTED"), "ABORTED");
    }

    #[test]
    fn int64_accepts_strings_numbers_and_absence() {
        #[derive(Deserialize)]
        struct Counts {
            #[serde(default, deserialize_with = "int64")]
            a: u64,
            #[serde(default, deserialize_with = "int64")]
            b: u64,
            #[serde(default, deserialize_with = "int64")]
            c: u64,
        }
        let counts: Counts = serde_json::from_str(r#"{"a":"12","b":7}"#).unwrap();
        assert_eq!((counts.a, counts.b, counts.c), (12, 7, 0));
    }
}
