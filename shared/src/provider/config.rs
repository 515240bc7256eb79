//! How to talk to a provider: base URL, credentials, timeouts and the retry policy.
//!
//! Each provider's descriptor reads its own variables into a [`ProviderConfig`]
//! ([`ProviderConfig::from_env`], [`ProviderConfig::from_lookup`]); the variables are
//! listed in the documentation of each descriptor (`provider/<name>/mod.rs`). Empty
//! counts as unset. Base URLs are roots without a version: clients add `/v1/…`,
//! `/v1beta/…` themselves.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::error::{Error, Result};
use crate::model::ProviderKind;

/// A secret: an API key, an OAuth access token or a service account's JSON. Its `Debug`
/// and `Display` never show it, and the HTTP layer scrubs it from every error message.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(String);

impl Credential {
    /// Rejects an empty secret, which would only fail later with a confusing 401.
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

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(***)")
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(***)")
    }
}

/// Connection and per-read timeouts. There is no overall request timeout because a
/// results download may legitimately stream for minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest wait for a connection (TCP and TLS).
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
    /// The ceiling of the first backoff; it doubles with every retry.
    pub base_delay: Duration,
    /// The largest ceiling the doubling reaches.
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
    ServiceAccountJson(Credential),
    /// The GCE/Cloud Run metadata server.
    MetadataServer,
    /// A fixed bearer token (tests, or a token minted elsewhere).
    StaticToken(Credential),
}

/// The Vertex AI specifics: project, region, bucket, Cloud Storage and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VertexSettings {
    /// The Google Cloud project the jobs run and bill in.
    pub project: String,
    /// The region (`us-central1`, or `global`).
    pub location: String,
    /// The Cloud Storage bucket for batch input and output.
    pub bucket: String,
    /// Cloud Storage's API root.
    pub storage_base_url: Url,
    /// Where the OAuth2 access tokens come from.
    pub credentials: GoogleCredentials,
}

/// AWS credentials for a client signed with SigV4 (Bedrock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsCredentials {
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, read at
    /// each use (Lambda sets them from the function's role).
    Environment,
    /// A fixed key pair (tests).
    Static {
        /// The access key id.
        access_key_id: String,
        /// The secret access key.
        secret_access_key: Credential,
    },
}

/// The Amazon Bedrock specifics: region, the service role the jobs run as, and where
/// their input and output live in S3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BedrockSettings {
    /// The AWS region the jobs run in.
    pub region: String,
    /// The service role Bedrock assumes to read the input and write the output.
    pub role_arn: String,
    /// The bucket that holds the jobs' input and output.
    pub bucket: String,
    /// The key prefix of the input and output objects, ending with `/`.
    pub prefix: String,
    /// S3's endpoint when it is not AWS's (moto locally).
    pub s3_endpoint: Option<String>,
    /// How long a job may run before Bedrock expires it (24 to 168 hours).
    pub timeout_hours: i32,
    /// Credentials for both the control plane and S3.
    pub credentials: AwsCredentials,
}

/// Everything a provider client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// API root without a version path, e.g. `https://api.openai.com`.
    pub base_url: Url,
    /// For OpenAI, Anthropic and Gemini.
    pub api_key: Option<Credential>,
    /// For Vertex AI (`ProviderKind::Vertex`) only.
    pub vertex: Option<VertexSettings>,
    /// For Amazon Bedrock (`ProviderKind::Bedrock`) only.
    pub bedrock: Option<BedrockSettings>,
    /// Connection and read timeouts.
    pub timeouts: Timeouts,
    /// How failed calls are retried.
    pub retry: RetryPolicy,
    /// A results line longer than this is an error rather than unbounded memory.
    pub max_line_bytes: usize,
}

/// Results lines are single JSON documents; a line beyond this is a broken stream.
pub const DEFAULT_MAX_LINE_BYTES: usize = 32 * 1024 * 1024;

impl ProviderConfig {
    /// A key-authenticated provider (OpenAI, Anthropic, Gemini) at `base_url`.
    pub fn with_api_key(base_url: &str, api_key: Credential) -> Result<Self> {
        Ok(Self {
            api_key: Some(api_key),
            ..Self::bare(parse_base_url("base URL", base_url)?)
        })
    }

    /// A key-authenticated provider read from `vars`: the key from `key_var` (required),
    /// the API root from `url_var`, `default_url` when unset.
    pub fn keyed(
        vars: &Variables<'_>,
        key_var: &str,
        url_var: &str,
        default_url: &str,
    ) -> Result<Self> {
        let key = Credential::new(vars.required(key_var)?)?;
        let url = vars.get(url_var).unwrap_or_else(|| default_url.to_string());
        Self::with_api_key(&url, key)
    }

    /// A provider at `base_url` with nothing but the defaults.
    pub(crate) fn bare(base_url: Url) -> Self {
        Self {
            base_url,
            api_key: None,
            vertex: None,
            bedrock: None,
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }
}

/// The variables a provider's configuration is read from (the environment, or a
/// lookup that puts secrets first); empty counts as unset.
pub struct Variables<'a> {
    kind: ProviderKind,
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Variables<'a> {
    /// The variables `lookup` answers, for `kind` (named in errors).
    pub fn new(kind: ProviderKind, lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { kind, lookup }
    }

    /// `name`, unless it is unset or empty.
    pub fn get(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    /// `name`, or an error that names it and the provider.
    pub fn required(&self, name: &str) -> Result<String> {
        self.get(name)
            .ok_or_else(|| Error::Config(format!("{name} is not set (needed for {})", self.kind)))
    }
}

/// Parses an API root; a trailing slash is dropped so paths join the same either way.
pub(crate) fn parse_base_url(what: &str, raw: &str) -> Result<Url> {
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

/// A lookup that answers `vars`, for configuration tests.
#[cfg(test)]
pub(crate) fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: std::collections::HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_never_prints() {
        let key = Credential::new("sk-secret-123").unwrap();
        assert_eq!(format!("{key}"), "Credential(***)");
        assert_eq!(format!("{key:?}"), "Credential(***)");
        let config = ProviderConfig::with_api_key("https://x.test", key).unwrap();
        assert!(!format!("{config:?}").contains("sk-secret-123"));
        assert!(Credential::new("  ").is_err());
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
            assert_eq!(config.api_key.as_ref().map(Credential::expose), Some("k1"));
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
}
