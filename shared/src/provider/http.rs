//! The one HTTP client every provider uses: reqwest over rustls, timeouts, retries
//! with exponential backoff, full jitter and `Retry-After`, and the provider's [`Auth`]
//! applied to every request it sends.
//!
//! Errors never carry a secret: every message built here passes through `HttpClient::scrub`.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use rand::Rng;
use reqwest::header::{
    AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER,
};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use super::config::{Credential, ProviderConfig, RetryPolicy};
use super::contract::LineStream;
use super::lines::split_lines;
use crate::error::{Error, Result};
use crate::model::ProviderKind;

/// How much of an error body is read to find the provider's message.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How much of an unparseable body is quoted in an error.
const MAX_QUOTED_BODY: usize = 300;

/// Anthropic's API key header.
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// The Gemini API's key header.
const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// The header that authenticates one call, marked sensitive so that it never prints.
type AuthHeader = (HeaderName, HeaderValue);

/// Whether a request may be sent again after it possibly reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Repeating it is harmless (reads, cancels, uploads: a duplicate file costs nothing).
    Always,
    /// Repeating it could do the work twice (creating a paid batch): after a timeout the
    /// server may have acted, so only failures before the request left are retried.
    OnlyIfUnsent,
}

/// How a provider's requests say who sends them. The client applies it to every request,
/// so no provider builds an auth header itself.
#[derive(Debug, Clone)]
pub enum Auth {
    /// `Authorization: Bearer <key>` (OpenAI).
    Bearer(Credential),
    /// `x-api-key: <key>` (Anthropic).
    XApiKey(Credential),
    /// `x-goog-api-key: <key>` (the Gemini API).
    XGoogApiKey(Credential),
    /// `Authorization: Bearer <token>` with an OAuth2 access token asked from the source
    /// for each call (Vertex AI and Cloud Storage); the token is scrubbed from its errors.
    OAuth(Arc<dyn AccessTokens>),
}

/// Where OAuth2 access tokens come from (a service account, the metadata server, a
/// fixed token). Implementations cache tokens: [`HttpClient`] asks once per call.
#[async_trait]
pub trait AccessTokens: Send + Sync + Debug {
    /// A token valid for the next request.
    async fn token(&self) -> Result<Credential>;
}

/// How an API pages a list, for [`HttpClient::list`].
#[derive(Debug, Clone, Copy)]
pub struct Paging<'a> {
    /// Sent with every page (the page size, a filter).
    pub query: &'a [(&'a str, &'a str)],
    /// The parameter that takes the next page's cursor.
    pub cursor: &'a str,
}

/// One page of a list answer, for [`HttpClient::list`].
pub trait Page: DeserializeOwned {
    /// What the page lists.
    type Item;
    /// The cursor of the next page; `None` on the last one.
    fn next_cursor(&self) -> Option<String>;
    /// The page's entries, in order.
    fn into_items(self) -> Vec<Self::Item>;
}

/// The `{data, has_more, last_id}` page OpenAI and Anthropic list with; the next page
/// starts after `last_id`.
#[derive(Debug, Deserialize)]
pub struct AfterIdPage<T> {
    data: Vec<T>,
    #[serde(default)]
    has_more: bool,
    last_id: Option<String>,
}

impl<T: DeserializeOwned> Page for AfterIdPage<T> {
    type Item = T;

    fn next_cursor(&self) -> Option<String> {
        self.last_id.clone().filter(|_| self.has_more)
    }

    fn into_items(self) -> Vec<T> {
        self.data
    }
}

/// A reqwest client bound to one provider: its API root, auth, retry policy and the
/// secrets to scrub.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    provider: ProviderKind,
    base: Url,
    auth: Auth,
    /// Sent with every request (Anthropic's `anthropic-version`).
    fixed_headers: Vec<(&'static str, &'static str)>,
    retry: RetryPolicy,
    max_line_bytes: usize,
    secrets: Vec<Credential>,
}

impl HttpClient {
    /// A client for `provider` at `config.base_url` that sends `auth` with every request.
    pub fn new(provider: ProviderKind, config: &ProviderConfig, auth: Auth) -> Result<Self> {
        let inner = crate::tls::reqwest_builder()
            .connect_timeout(config.timeouts.connect)
            .read_timeout(config.timeouts.read)
            .user_agent(concat!("batchline/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        let mut secrets: Vec<Credential> = config.api_key.iter().cloned().collect();
        if let Some(vertex) = &config.vertex
            && let super::config::GoogleCredentials::StaticToken(token) = &vertex.credentials
        {
            secrets.push(token.clone());
        }
        Ok(Self {
            inner,
            provider,
            base: config.base_url.clone(),
            auth,
            fixed_headers: Vec::new(),
            retry: config.retry,
            max_line_bytes: config.max_line_bytes,
            secrets,
        })
    }

    /// The same client, also sending `name: value` with every request.
    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Self {
        self.fixed_headers.push((name, value));
        self
    }

    /// The same client at another API root (Vertex AI's Cloud Storage).
    pub fn with_base(mut self, base: Url) -> Self {
        self.base = base;
        self
    }

    /// A copy that also scrubs `secret` (a short-lived token) from its errors.
    fn with_secret(&self, secret: &Credential) -> Self {
        let mut client = self.clone();
        client.secrets.push(secret.clone());
        client
    }

    /// `path` (starting with `/`) under the API root, keeping any path prefix of the
    /// root (a proxy root such as `https://gateway.test/openai`).
    pub fn url(&self, path: &str) -> String {
        endpoint(&self.base, path)
    }

    /// A URL handed out by the provider, refused unless it is on the API root's origin:
    /// the credentials go with every request this client sends.
    pub fn checked_url(&self, raw: &str) -> Result<Url> {
        checked_url(self.provider, &self.base, raw)
    }

    /// The client for one call and the auth header it sends: for OAuth a token fetched
    /// now, which that client also scrubs from its errors.
    async fn session(&self) -> Result<(Self, AuthHeader)> {
        let (client, name, value) = match &self.auth {
            Auth::Bearer(key) => (self.clone(), AUTHORIZATION, bearer(key)),
            Auth::XApiKey(key) => (self.clone(), X_API_KEY, key.expose().to_string()),
            Auth::XGoogApiKey(key) => (self.clone(), X_GOOG_API_KEY, key.expose().to_string()),
            Auth::OAuth(tokens) => {
                let token = tokens.token().await?;
                (self.with_secret(&token), AUTHORIZATION, bearer(&token))
            }
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            Error::Config(format!(
                "the {} credential is not a valid HTTP header value",
                self.provider
            ))
        })?;
        value.set_sensitive(true);
        Ok((client, (name, value)))
    }

    /// Sends the request `build` makes, with the auth applied, making it again for every
    /// retry (so bodies must be cheap to clone: use `Bytes`). Answers with the first 2xx
    /// response.
    ///
    /// Retries 429, 500, 502, 503, 504, 529 and connection failures (and timeouts when
    /// `resend` allows) with backoff; any other status is an [`Error::Api`] carrying the
    /// provider's own message; running out of attempts is an [`Error::QuotaExceeded`]
    /// when the last answer was 429, else an [`Error::Transport`].
    pub async fn send_with_retry<F>(&self, resend: Resend, build: F) -> Result<Response>
    where
        F: Fn(&reqwest::Client) -> RequestBuilder,
    {
        let (session, auth) = self.session().await?;
        session.send_authorized(resend, &auth, build).await
    }

    async fn send_authorized<F>(
        &self,
        resend: Resend,
        auth: &AuthHeader,
        build: F,
    ) -> Result<Response>
    where
        F: Fn(&reqwest::Client) -> RequestBuilder,
    {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let request = self
                .fixed_headers
                .iter()
                .fold(build(&self.inner), |request, (name, value)| {
                    request.header(*name, *value)
                })
                .header(auth.0.clone(), auth.1.clone());
            let mut rate_limited = false;
            let (reason, retry_after) = match request.send().await {
                Ok(response) if response.status().is_success() => return Ok(response),
                Ok(response) => {
                    let status = response.status();
                    let retry_after = retry_after(response.headers(), SystemTime::now());
                    let message = self.error_message(response).await;
                    if !is_retryable_status(status) {
                        return Err(Error::Api {
                            provider: self.provider,
                            status: status.as_u16(),
                            message,
                        });
                    }
                    rate_limited = status == StatusCode::TOO_MANY_REQUESTS;
                    (format!("HTTP {}: {message}", status.as_u16()), retry_after)
                }
                Err(error) => {
                    let reason = self.describe(&error);
                    let unsent = error.is_connect();
                    let retryable = unsent
                        || (resend == Resend::Always && (error.is_timeout() || error.is_request()));
                    if !retryable {
                        return Err(self.transport(attempt, reason));
                    }
                    (reason, None)
                }
            };
            if attempt >= self.retry.max_attempts {
                if rate_limited {
                    return Err(Error::QuotaExceeded {
                        provider: self.provider,
                        attempts: attempt,
                        message: self.scrub(&reason),
                    });
                }
                return Err(self.transport(attempt, format!("giving up, last answer: {reason}")));
            }
            let delay = match retry_after {
                Some(asked) => asked.min(self.retry.max_retry_after),
                None => backoff(&self.retry, attempt),
            };
            tracing::warn!(
                provider = %self.provider,
                attempt,
                delay_ms = delay.as_millis() as u64,
                %reason,
                "retrying provider request"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// [`Self::send_with_retry`], then the whole body parsed as JSON.
    pub async fn json<T, F>(&self, resend: Resend, build: F) -> Result<T>
    where
        T: DeserializeOwned,
        F: Fn(&reqwest::Client) -> RequestBuilder,
    {
        let (session, auth) = self.session().await?;
        let response = session.send_authorized(resend, &auth, build).await?;
        let body = response.bytes().await.map_err(|e| {
            session.transport(1, format!("reading the answer: {}", session.describe(&e)))
        })?;
        session.parse_json(&body)
    }

    /// GETs `path` (under the API root), the answer parsed as JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = self.url(path);
        self.json(Resend::Always, |http| http.get(&url)).await
    }

    /// POSTs `body` as JSON (nothing when `None`) to `path`, the answer parsed as JSON.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        resend: Resend,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T> {
        let url = self.url(path);
        let body = body.map(serde_json::to_vec).transpose()?.map(Bytes::from);
        self.json(resend, |http| {
            with_json_body(http.post(&url), body.as_ref())
        })
        .await
    }

    /// POSTs `body` as JSON to `path` and drops the answer (Google's cancel answers `{}`).
    pub async fn post_ignoring_answer(&self, path: &str, body: &Value) -> Result<()> {
        let url = self.url(path);
        let body = Bytes::from(serde_json::to_vec(body)?);
        self.send_with_retry(Resend::Always, |http| {
            with_json_body(http.post(&url), Some(&body))
        })
        .await?;
        Ok(())
    }

    /// Every entry of the list at `path`, all pages as `paging` asks for them, each turned
    /// into `T` by `map` as its page arrives. A page that does not move the cursor ends
    /// the list (rather than looping forever).
    pub async fn list<P, T>(
        &self,
        path: &str,
        paging: Paging<'_>,
        map: impl Fn(P::Item) -> Result<T>,
    ) -> Result<Vec<T>>
    where
        P: Page,
    {
        let url = self.url(path);
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page: P = self
                .json(Resend::Always, |http| {
                    let request = http.get(&url).query(paging.query);
                    match &after {
                        Some(after) => request.query(&[(paging.cursor, after)]),
                        None => request,
                    }
                })
                .await?;
            let next = page.next_cursor();
            for item in page.into_items() {
                all.push(map(item)?);
            }
            match next {
                Some(next) if after.as_ref() != Some(&next) => after = Some(next),
                _ => return Ok(all),
            }
        }
    }

    /// Parses a 2xx body, quoting the start of it when it is not what was expected.
    fn parse_json<T: DeserializeOwned>(&self, body: &[u8]) -> Result<T> {
        serde_json::from_slice(body).map_err(|e| Error::Protocol {
            provider: self.provider,
            message: self.scrub(&format!("{e} in {}", quote(body))),
        })
    }

    /// GETs `url` (from [`Self::url`] or [`Self::checked_url`]) with `query` and streams
    /// the body split into lines as it arrives.
    pub async fn lines(&self, url: &str, query: &[(&str, &str)]) -> Result<LineStream> {
        let (session, auth) = self.session().await?;
        let response = session
            .send_authorized(Resend::Always, &auth, |http| http.get(url).query(query))
            .await?;
        let max_line_bytes = session.max_line_bytes;
        let provider = session.provider;
        let chunks = response
            .bytes_stream()
            .map_err(move |e| session.describe(&e));
        Ok(split_lines(chunks, max_line_bytes, provider))
    }

    /// A protocol error (2xx with an answer we cannot use), scrubbed.
    pub fn protocol(&self, message: impl AsRef<str>) -> Error {
        Error::Protocol {
            provider: self.provider,
            message: self.scrub(message.as_ref()),
        }
    }

    fn transport(&self, attempts: u32, message: String) -> Error {
        Error::Transport {
            provider: self.provider,
            attempts,
            message: self.scrub(&message),
        }
    }

    fn describe(&self, error: &reqwest::Error) -> String {
        self.scrub(&error_chain(error))
    }

    /// The provider's message from an error answer, or the start of its body.
    async fn error_message(&self, mut response: Response) -> String {
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => {
                    return self.scrub(&format!("(error body unreadable: {})", self.describe(&e)));
                }
            }
        }
        let message = provider_message(&body).unwrap_or_else(|| quote(&body));
        self.scrub(&message)
    }

    /// Replaces every known secret in `text`.
    fn scrub(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_string(), |acc, secret| {
            acc.replace(secret.expose(), "***")
        })
    }
}

pub(crate) fn is_retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504 | 529)
}

/// Full jitter: uniform in `[0, min(max_delay, base_delay * 2^(attempt-1))]`.
pub(crate) fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(30);
    let ceiling = policy
        .base_delay
        .saturating_mul(1u32 << exponent)
        .min(policy.max_delay);
    let ceiling_ms = ceiling.as_millis().min(u64::MAX as u128) as u64;
    Duration::from_millis(rand::rng().random_range(0..=ceiling_ms))
}

/// `Retry-After` as delay-seconds or an HTTP date (a past date means now).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    Some(
        SystemTime::from(date)
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    )
}

/// `{"error":{"message", "type"|"status"|"code"}}` as OpenAI, Anthropic and Google send it.
fn provider_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let message = error.get("message")?.as_str()?;
    let kind = ["type", "status", "code"]
        .iter()
        .find_map(|field| error.get(*field).and_then(serde_json::Value::as_str));
    Some(match kind {
        Some(kind) => format!("{message} ({kind})"),
        None => message.to_string(),
    })
}

/// The start of a body, for error messages.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_string();
    }
    match text.char_indices().nth(MAX_QUOTED_BODY) {
        Some((cut, _)) => format!("{:?}…", &text[..cut]),
        None => format!("{text:?}"),
    }
}

/// An error with its causes ("error sending request: connection refused"): reqwest's
/// own message leaves out the part that says what went wrong.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `base` root joined with `path` (which starts with `/`), keeping any path prefix of
/// the base (a proxy root such as `https://gateway.test/openai`).
fn endpoint(base: &Url, path: &str) -> String {
    format!("{}{path}", base.as_str().trim_end_matches('/'))
}

/// Same scheme, host and port: the only URLs credentials may be sent to.
fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Parses a URL handed out by the provider and refuses it unless it is on `base`'s origin.
fn checked_url(provider: ProviderKind, base: &Url, raw: &str) -> Result<Url> {
    let foreign = || Error::ForeignHost {
        provider,
        url: raw.to_string(),
    };
    let url = Url::parse(raw).map_err(|_| foreign())?;
    if !same_origin(base, &url) {
        return Err(foreign());
    }
    Ok(url)
}

/// `Bearer <credential>`.
fn bearer(credential: &Credential) -> String {
    format!("Bearer {}", credential.expose())
}

/// A body that can be sent again on retry without copying.
pub fn body(bytes: &Bytes) -> reqwest::Body {
    reqwest::Body::from(bytes.clone())
}

/// `request` carrying `body` as `application/json`, or no body at all.
fn with_json_body(request: RequestBuilder, body: Option<&Bytes>) -> RequestBuilder {
    match body {
        Some(body) => request
            .header(CONTENT_TYPE, "application/json")
            .body(self::body(body)),
        None => request,
    }
}

/// A loopback HTTP/1.1 server with canned answers, for client unit tests.
#[cfg(test)]
pub(crate) mod test_server {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// One canned HTTP answer: status, extra headers, body.
    pub type Canned = (u16, Vec<(&'static str, String)>, String);

    /// A loopback HTTP/1.1 server answering connection `n` with `answers[n]` (the last
    /// one repeats); counts the requests it saw.
    pub async fn scripted_server(answers: Vec<Canned>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let (status, headers, body) = answers[n.min(answers.len() - 1)].clone();
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(read) => seen.extend_from_slice(&buf[..read]),
                        }
                    }
                    let mut head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n",
                        body.len()
                    );
                    for (name, value) in headers {
                        head.push_str(&format!("{name}: {value}\r\n"));
                    }
                    head.push_str("\r\n");
                    let _ = socket.write_all(head.as_bytes()).await;
                    let _ = socket.write_all(body.as_bytes()).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (format!("http://{addr}"), hits)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use tokio::net::TcpListener;

    use super::test_server::scripted_server;
    use super::*;
    use crate::provider::config::Timeouts;

    const SECRET: &str = "sk-test-SECRET-value";

    fn client(base: &str, max_attempts: u32) -> HttpClient {
        let mut config =
            ProviderConfig::with_api_key(base, Credential::new(SECRET).unwrap()).unwrap();
        config.retry = RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_retry_after: Duration::from_secs(5),
        };
        config.timeouts = Timeouts {
            connect: Duration::from_secs(2),
            read: Duration::from_secs(2),
        };
        let auth = Auth::Bearer(Credential::new(SECRET).unwrap());
        HttpClient::new(ProviderKind::OpenAi, &config, auth).unwrap()
    }

    async fn get(client: &HttpClient, base: &str) -> Result<String> {
        let url = format!("{base}/v1/batches");
        let response = client
            .send_with_retry(Resend::Always, |http| http.get(&url))
            .await?;
        Ok(response.text().await.unwrap())
    }

    fn openai_error(message: &str) -> String {
        serde_json::json!({"error":{"message":message,"type":"rate_limit_exceeded","param":null,"code":null}})
            .to_string()
    }

    #[tokio::test]
    async fn retries_429_after_the_retry_after_it_was_given() {
        let limited = (
            429,
            vec![("retry-after", "1".to_string())],
            openai_error("slow down"),
        );
        let (base, hits) = scripted_server(vec![limited, (200, vec![], "ok".into())]).await;
        let started = Instant::now();
        let body = get(&client(&base, 3), &base).await.unwrap();
        assert_eq!(body, "ok");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        // Backoff alone would wait at most 2 ms; one second means Retry-After was used.
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn retry_after_is_capped() {
        let limited = (
            503,
            vec![("retry-after", "3600".to_string())],
            String::new(),
        );
        let (base, hits) = scripted_server(vec![limited, (200, vec![], "ok".into())]).await;
        let mut client = client(&base, 3);
        client.retry.max_retry_after = Duration::from_millis(20);
        let started = Instant::now();
        assert_eq!(get(&client, &base).await.unwrap(), "ok");
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_with_the_count() {
        let (base, hits) = scripted_server(vec![(529, vec![], openai_error("overloaded"))]).await;
        let err = get(&client(&base, 4), &base).await.unwrap_err();
        assert_eq!(hits.load(Ordering::SeqCst), 4);
        match &err {
            Error::Transport {
                attempts, message, ..
            } => {
                assert_eq!(*attempts, 4);
                assert!(
                    message.contains("529") && message.contains("overloaded"),
                    "{message}"
                );
            }
            other => panic!("expected Transport, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_429_to_the_last_attempt_is_a_quota_refusal() {
        let queue_full = openai_error("the batch queue is full");
        let (base, hits) = scripted_server(vec![(429, vec![], queue_full)]).await;
        let err = get(&client(&base, 3), &base).await.unwrap_err();
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        match &err {
            Error::QuotaExceeded {
                attempts, message, ..
            } => {
                assert_eq!(*attempts, 3);
                assert!(message.contains("queue is full"), "{message}");
            }
            other => panic!("expected QuotaExceeded, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn does_not_retry_400_and_surfaces_the_provider_message() {
        let bad = openai_error("Invalid 'metadata': too many keys");
        let (base, hits) = scripted_server(vec![(400, vec![], bad)]).await;
        let err = get(&client(&base, 5), &base).await.unwrap_err();
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        match &err {
            Error::Api {
                status, message, ..
            } => {
                assert_eq!(*status, 400);
                assert_eq!(
                    message,
                    "Invalid 'metadata': too many keys (rate_limit_exceeded)"
                );
            }
            other => panic!("expected Api, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn never_puts_the_key_or_a_session_token_in_errors() {
        const TOKEN: &str = "ya29.session-token-value";
        let echo = openai_error(&format!(
            "Incorrect API key provided: {SECRET}, token {TOKEN}"
        ));
        let (base, _) = scripted_server(vec![(401, vec![], echo)]).await;
        let client = client(&base, 2).with_secret(&Credential::new(TOKEN).unwrap());
        let err = get(&client, &base).await.unwrap_err();
        for text in [err.to_string(), format!("{err:?}"), format!("{client:?}")] {
            assert!(!text.contains(SECRET) && !text.contains(TOKEN), "{text}");
        }
        assert!(
            err.to_string()
                .contains("Incorrect API key provided: ***, token ***"),
            "{err}"
        );
    }

    #[derive(Debug)]
    struct FixedTokens;

    #[async_trait]
    impl AccessTokens for FixedTokens {
        async fn token(&self) -> Result<Credential> {
            Credential::new("ya29.fresh")
        }
    }

    #[tokio::test]
    async fn each_auth_style_is_one_sensitive_header() {
        let key = || Credential::new(SECRET).unwrap();
        let bearer = format!("Bearer {SECRET}");
        let cases: [(Auth, &str, &str); 4] = [
            (Auth::Bearer(key()), "authorization", &bearer),
            (Auth::XApiKey(key()), "x-api-key", SECRET),
            (Auth::XGoogApiKey(key()), "x-goog-api-key", SECRET),
            (
                Auth::OAuth(Arc::new(FixedTokens)),
                "authorization",
                "Bearer ya29.fresh",
            ),
        ];
        let config = ProviderConfig::with_api_key("https://x.test", key()).unwrap();
        for (auth, name, value) in cases {
            let client = HttpClient::new(ProviderKind::OpenAi, &config, auth).unwrap();
            let (session, (header, sent)) = client.session().await.unwrap();
            assert_eq!((header.as_str(), sent.to_str().unwrap()), (name, value));
            assert!(sent.is_sensitive());
            // What the header carries (an OAuth token too) never reaches that call's errors.
            let scrubbed = session.scrub(value);
            assert!(
                !scrubbed.contains(SECRET) && !scrubbed.contains("ya29"),
                "{scrubbed}"
            );
        }
    }

    #[tokio::test]
    async fn connection_refused_is_retried_then_transport() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let err = get(&client(&base, 3), &base).await.unwrap_err();
        assert!(
            matches!(err, Error::Transport { attempts: 3, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn parses_google_and_anthropic_error_bodies() {
        let google = br#"{"error":{"code":400,"message":"Bad model","status":"INVALID_ARGUMENT"}}"#;
        assert_eq!(
            provider_message(google).unwrap(),
            "Bad model (INVALID_ARGUMENT)"
        );
        let anthropic =
            br#"{"type":"error","error":{"type":"invalid_request_error","message":"bad id"}}"#;
        assert_eq!(
            provider_message(anthropic).unwrap(),
            "bad id (invalid_request_error)"
        );
        assert_eq!(provider_message(b"<html>oops</html>"), None);
        assert_eq!(quote(b"<html>oops</html>"), "\"<html>oops</html>\"");
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 07:27:50 GMT
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(10)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:00:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers, now), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn backoff_stays_under_the_exponential_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_retry_after: Duration::from_secs(1),
        };
        for _ in 0..200 {
            assert!(backoff(&policy, 1) <= Duration::from_millis(100));
            assert!(backoff(&policy, 3) <= Duration::from_millis(400));
            assert!(backoff(&policy, 30) <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn origins_must_match_exactly() {
        let base = Url::parse("https://api.anthropic.com").unwrap();
        let ok = checked_url(
            ProviderKind::Anthropic,
            &base,
            "https://api.anthropic.com:443/v1/x",
        );
        assert!(ok.is_ok());
        for foreign in [
            "https://evil.test/v1/x",
            "http://api.anthropic.com/v1/x",
            "https://api.anthropic.com:8443/v1/x",
            "https://api.anthropic.com.evil.test/x",
            "not a url",
        ] {
            let err = checked_url(ProviderKind::Anthropic, &base, foreign).unwrap_err();
            assert!(
                matches!(err, Error::ForeignHost { .. }),
                "{foreign}: {err:?}"
            );
        }
    }
}
