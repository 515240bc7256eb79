//! Where each provider lives and how to talk to it: base URLs, credentials, timeouts
//! and the retry policy.
//!
//! [`ProviderConfig::from_env`] reads these environment variables (empty counts as unset):
//!
//! | Variable | Provider | Meaning |
//! |---|---|---|
//! | `OPENAI_API_KEY` | openai | API key (required) |
//! | `OPENAI_BASE_URL` | openai | API root, default `https://api.openai.com` |
//! | `ANTHROPIC_API_KEY` | anthropic | API key (required) |
//! | `ANTHROPIC_BASE_URL` | anthropic | API root, default `https://api.anthropic.com` |
//! | `GEMINI_API_KEY` | gemini | API key (required) |
//! | `GEMINI_BASE_URL` | gemini | API root, default `https://generativelanguage.googleapis.com` |
//! | `GOOGLE_CLOUD_PROJECT` | google | Vertex AI project id (required) |
//! | `GOOGLE_CLOUD_LOCATION` | google | Vertex AI region, default `us-central1` |
//! | `GCS_BUCKET` | google | Cloud Storage bucket for batch input and output (required) |
//! | `VERTEX_BASE_URL` | google | API root, default `https://{location}-aiplatform.googleapis.com` (`https://aiplatform.googleapis.com` for `global`) |
//! | `GCS_BASE_URL` | google | Cloud Storage root, default `https://storage.googleapis.com` |
//! | `GOOGLE_ACCESS_TOKEN` | google | a ready OAuth2 access token (local runs); wins over the two below |
//! | `GOOGLE_APPLICATION_CREDENTIALS` | google | service-account JSON file; unset means the metadata server |
//!
//! Base URLs are roots without a version: clients add `/v1/…`, `/v1beta/…` themselves.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::error::{Error, Result};
use crate::model::ProviderKind;

/// A secret (API key or OAuth token). Its `Debug` and `Display` never show it, and the
/// HTTP layer scrubs it from every error message.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Rejects an empty key, which would only fail later with a confusing 401.
    pub fn new(key: impl Into<String>) -> Result<Self> {
        let key = key.into();
        if key.trim().is_empty() {
            return Err(Error::Config("API key is empty".to_string()));
        }
        Ok(Self(key))
    }

    /// The secret itself, for a request header. Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// Connection and per-read timeouts. There is no overall request timeout because a
/// results download may legitimately stream for minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Longest wait for the next bytes of an answer.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            read: Duration::from_secs(60),
        }
    }
}

/// Exponential backoff with full jitter: before retry `n` (1-based) the client sleeps a
/// random duration in `[0, min(max_delay, base_delay * 2^(n-1))]`, or what the server asked
/// for in `Retry-After`, capped at `max_retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (1 disables retries).
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A longer `Retry-After` is shortened to this, so one answer cannot stall a Lambda.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// Where Vertex AI gets its OAuth2 access tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GoogleCredentials {
    /// A service-account JSON file; its `token_uri` is honoured (tests point it at a
    /// local server).
    ServiceAccountFile(PathBuf),
    /// The same JSON held in memory (read from a secret store).
    ServiceAccountJson(ApiKey),
    /// The GCE/Cloud Run metadata server.
    MetadataServer,
    /// A fixed bearer token (tests, or a token minted elsewhere).
    StaticToken(ApiKey),
}

/// The Vertex AI specifics: project, region, bucket, Cloud Storage and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VertexSettings {
    pub project: String,
    pub location: String,
    pub bucket: String,
    pub storage_base_url: Url,
    pub credentials: GoogleCredentials,
}

/// Everything a provider client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// API root without a version path, e.g. `https://api.openai.com`.
    pub base_url: Url,
    /// For OpenAI, Anthropic and Gemini.
    pub api_key: Option<ApiKey>,
    /// For Vertex AI (`ProviderKind::Google`) only.
    pub vertex: Option<VertexSettings>,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    /// A results line longer than this is an error rather than unbounded memory.
    pub max_line_bytes: usize,
}

/// Results lines are single JSON documents; a line beyond this is a broken stream.
pub const DEFAULT_MAX_LINE_BYTES: usize = 32 * 1024 * 1024;

pub const DEFAULT_VERTEX_LOCATION: &str = "us-central1";
pub const DEFAULT_STORAGE_BASE_URL: &str = "https://storage.googleapis.com";

impl ProviderConfig {
    /// A key-authenticated provider (OpenAI, Anthropic, Gemini) at `base_url`.
    pub fn with_api_key(base_url: &str, api_key: ApiKey) -> Result<Self> {
        Ok(Self {
            api_key: Some(api_key),
            ..Self::bare(parse_base_url("base URL", base_url)?)
        })
    }

    /// Vertex AI at `base_url` (`None`: the regional default for `settings.location`).
    pub fn vertex(base_url: Option<&str>, settings: VertexSettings) -> Result<Self> {
        let base_url = match base_url {
            Some(url) => parse_base_url("Vertex base URL", url)?,
            None => default_vertex_base_url(&settings.location)?,
        };
        Ok(Self {
            vertex: Some(settings),
            ..Self::bare(base_url)
        })
    }

    fn bare(base_url: Url) -> Self {
        Self {
            base_url,
            api_key: None,
            vertex: None,
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }

    /// Reads the variables listed in the [module documentation](self).
    pub fn from_env(kind: ProviderKind) -> Result<Self> {
        Self::from_lookup(kind, |name| std::env::var(name).ok())
    }

    /// Like [`Self::from_env`] with `lookup` in place of the process environment.
    pub fn from_lookup(
        kind: ProviderKind,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let required = |name: &str| {
            get(name).ok_or_else(|| Error::Config(format!("{name} is not set (needed for {kind})")))
        };
        let keyed = |key_var: &str, url_var: &str, default_url: &str| {
            let key = ApiKey::new(required(key_var)?)?;
            let url = get(url_var).unwrap_or_else(|| default_url.to_string());
            Self::with_api_key(&url, key)
        };
        match kind {
            ProviderKind::OpenAi => keyed(
                "OPENAI_API_KEY",
                "OPENAI_BASE_URL",
                "https://api.openai.com",
            ),
            ProviderKind::Anthropic => keyed(
                "ANTHROPIC_API_KEY",
                "ANTHROPIC_BASE_URL",
                "https://api.anthropic.com",
            ),
            ProviderKind::Gemini => keyed(
                "GEMINI_API_KEY",
                "GEMINI_BASE_URL",
                "https://generativelanguage.googleapis.com",
            ),
            ProviderKind::Google => {
                let storage =
                    get("GCS_BASE_URL").unwrap_or_else(|| DEFAULT_STORAGE_BASE_URL.to_string());
                let settings = VertexSettings {
                    project: required("GOOGLE_CLOUD_PROJECT")?,
                    location: get("GOOGLE_CLOUD_LOCATION")
                        .unwrap_or_else(|| DEFAULT_VERTEX_LOCATION.to_string()),
                    bucket: required("GCS_BUCKET")?,
                    storage_base_url: parse_base_url("GCS_BASE_URL", &storage)?,
                    credentials: match (
                        get("GOOGLE_ACCESS_TOKEN"),
                        get("GOOGLE_APPLICATION_CREDENTIALS"),
                    ) {
                        (Some(token), _) => GoogleCredentials::StaticToken(ApiKey::new(token)?),
                        (None, Some(path)) => {
                            GoogleCredentials::ServiceAccountFile(PathBuf::from(path))
                        }
                        (None, None) => GoogleCredentials::MetadataServer,
                    },
                };
                Self::vertex(get("VERTEX_BASE_URL").as_deref(), settings)
            }
        }
    }
}

/// `https://{location}-aiplatform.googleapis.com`, or the global endpoint.
pub fn default_vertex_base_url(location: &str) -> Result<Url> {
    let valid = !location.is_empty()
        && location
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        return Err(Error::Config(format!(
            "GOOGLE_CLOUD_LOCATION {location:?} is not a region name like us-central1"
        )));
    }
    let url = if location == "global" {
        "https://aiplatform.googleapis.com".to_string()
    } else {
        format!("https://{location}-aiplatform.googleapis.com")
    };
    parse_base_url("Vertex base URL", &url)
}

/// Parses an API root; a trailing slash is dropped so paths join the same either way.
fn parse_base_url(what: &str, raw: &str) -> Result<Url> {
    let url = Url::parse(raw.trim_end_matches('/'))
        .map_err(|e| Error::Config(format!("{what} {raw:?} is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::Config(format!(
            "{what} {raw:?} must be an http(s) URL with a host"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(Error::Config(format!(
            "{what} {raw:?} must not carry a query, fragment or credentials"
        )));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn api_key_never_prints() {
        let key = ApiKey::new("sk-secret-123").unwrap();
        assert_eq!(format!("{key}"), "ApiKey(***)");
        assert_eq!(format!("{key:?}"), "ApiKey(***)");
        let config = ProviderConfig::with_api_key("https://x.test", key).unwrap();
        assert!(!format!("{config:?}").contains("sk-secret-123"));
        assert!(ApiKey::new("  ").is_err());
    }

    #[test]
    fn keyed_providers_read_key_and_default_urls() {
        let cases = [
            (
                ProviderKind::OpenAi,
                "OPENAI_API_KEY",
                "https://api.openai.com/",
            ),
            (
                ProviderKind::Anthropic,
                "ANTHROPIC_API_KEY",
                "https://api.anthropic.com/",
            ),
            (
                ProviderKind::Gemini,
                "GEMINI_API_KEY",
                "https://generativelanguage.googleapis.com/",
            ),
        ];
        for (kind, var, url) in cases {
            let config = ProviderConfig::from_lookup(kind, lookup(&[(var, "k1")])).unwrap();
            assert_eq!(config.base_url.as_str(), url);
            assert_eq!(config.api_key.as_ref().map(ApiKey::expose), Some("k1"));
            let missing = ProviderConfig::from_lookup(kind, lookup(&[(var, "")])).unwrap_err();
            assert!(missing.to_string().contains(var), "{missing}");
        }
    }

    #[test]
    fn base_url_overrides_are_honoured_and_validated() {
        let config = ProviderConfig::from_lookup(
            ProviderKind::Anthropic,
            lookup(&[
                ("ANTHROPIC_API_KEY", "k"),
                ("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/"),
            ]),
        )
        .unwrap();
        assert_eq!(config.base_url.as_str(), "http://127.0.0.1:9/");
        for bad in [
            "not a url",
            "ftp://x.test",
            "https://user:pw@x.test",
            "https://x.test/?a=b",
        ] {
            let err = ProviderConfig::from_lookup(
                ProviderKind::OpenAi,
                lookup(&[("OPENAI_API_KEY", "k"), ("OPENAI_BASE_URL", bad)]),
            )
            .unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn vertex_defaults_and_overrides() {
        let base = [("GOOGLE_CLOUD_PROJECT", "p1"), ("GCS_BUCKET", "b1")];
        let config = ProviderConfig::from_lookup(ProviderKind::Google, lookup(&base)).unwrap();
        assert_eq!(
            config.base_url.as_str(),
            "https://us-central1-aiplatform.googleapis.com/"
        );
        let vertex = config.vertex.unwrap();
        assert_eq!(vertex.location, "us-central1");
        assert_eq!(
            vertex.storage_base_url.as_str(),
            "https://storage.googleapis.com/"
        );
        assert_eq!(vertex.credentials, GoogleCredentials::MetadataServer);

        let mut vars = base.to_vec();
        vars.extend([
            ("GOOGLE_CLOUD_LOCATION", "global"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "/tmp/sa.json"),
            ("GCS_BASE_URL", "http://127.0.0.1:7"),
        ]);
        let config = ProviderConfig::from_lookup(ProviderKind::Google, lookup(&vars)).unwrap();
        assert_eq!(
            config.base_url.as_str(),
            "https://aiplatform.googleapis.com/"
        );
        let vertex = config.vertex.unwrap();
        assert_eq!(
            vertex.credentials,
            GoogleCredentials::ServiceAccountFile(PathBuf::from("/tmp/sa.json"))
        );
        assert_eq!(vertex.storage_base_url.as_str(), "http://127.0.0.1:7/");

        vars.push(("VERTEX_BASE_URL", "http://127.0.0.1:8"));
        let config = ProviderConfig::from_lookup(ProviderKind::Google, lookup(&vars)).unwrap();
        assert_eq!(config.base_url.as_str(), "http://127.0.0.1:8/");

        let err =
            ProviderConfig::from_lookup(ProviderKind::Google, lookup(&base[..1])).unwrap_err();
        assert!(err.to_string().contains("GCS_BUCKET"), "{err}");
        let bad_location = [("GOOGLE_CLOUD_LOCATION", "us/../evil")];
        let err = ProviderConfig::from_lookup(
            ProviderKind::Google,
            lookup(&[base[0], base[1], bad_location[0]]),
        )
        .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }
}
