//! Google's OAuth 2.0 token endpoint for service accounts (`POST /token`, JWT bearer
//! grant), and the bearer-token check that Vertex AI and Cloud Storage calls pass.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::rejection::FormRejection;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::common::{lock, unix_now};
use crate::google::{Code, GoogleError};

const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
const TOKEN_LIFETIME: Duration = Duration::from_secs(3599);
/// Google refuses assertions valid for longer than an hour.
const MAX_ASSERTION_LIFETIME_S: i64 = 3600;
const CLOCK_SKEW_S: i64 = 300;

/// Access tokens this emulator issued, plus the configured API key, which is accepted
/// as a pre-issued token so simple tests need no JWT.
#[derive(Debug)]
pub struct Tokens {
    api_key: String,
    issued: Mutex<HashMap<String, Instant>>,
}

impl Tokens {
    pub fn new(api_key: String) -> Self {
        Self {
            api_key,
            issued: Mutex::new(HashMap::new()),
        }
    }

    fn issue(&self) -> String {
        let token = format!("ya29.emulated-{}", uuid::Uuid::new_v4().simple());
        lock(&self.issued).insert(token.clone(), Instant::now() + TOKEN_LIFETIME);
        token
    }

    pub fn accepts(&self, token: &str) -> bool {
        token == self.api_key
            || lock(&self.issued)
                .get(token)
                .is_some_and(|expiry| *expiry > Instant::now())
    }
}

/// `POST /token`.
pub fn router(tokens: Arc<Tokens>) -> Router {
    Router::new()
        .route("/token", post(token))
        .with_state(tokens)
}

/// An OAuth error answer: `{"error","error_description"}`.
struct OAuthError {
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            description: description.into(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response()
    }
}

async fn token(
    State(tokens): State<Arc<Tokens>>,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Result<Json<Value>, OAuthError> {
    let Form(form) = form.map_err(|rejection| {
        OAuthError::new(
            "invalid_request",
            format!("Expected an application/x-www-form-urlencoded body: {rejection}"),
        )
    })?;
    let grant_type = form.get("grant_type").map(String::as_str).unwrap_or("");
    if grant_type != JWT_BEARER_GRANT {
        return Err(OAuthError::new(
            "unsupported_grant_type",
            format!("Invalid grant_type: {grant_type}"),
        ));
    }
    let assertion = form.get("assertion").ok_or_else(|| {
        OAuthError::new("invalid_request", "Missing required parameter: assertion")
    })?;
    check_assertion(assertion, unix_now())?;
    Ok(Json(json!({
        "access_token": tokens.issue(),
        "expires_in": TOKEN_LIFETIME.as_secs(),
        "token_type": "Bearer",
    })))
}

/// Checks a service account's signed JWT the way Google does, except for the signature
/// (the emulator does not know the key): three parts, RS256, and the claims `iss`,
/// `scope` (with cloud-platform), `aud`, `iat` and `exp` within an hour of each other.
fn check_assertion(assertion: &str, now: i64) -> Result<(), OAuthError> {
    let invalid = |why: &str| OAuthError::new("invalid_grant", format!("Invalid JWT: {why}"));
    let segments: Vec<&str> = assertion.split('.').collect();
    if segments.len() != 3 || segments.iter().any(|s| s.is_empty()) {
        return Err(invalid("a JWT has three non-empty dot-separated parts."));
    }
    let header =
        decode_segment(segments[0]).ok_or_else(|| invalid("the header is not base64url JSON."))?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(invalid("the signing algorithm must be RS256."));
    }
    let claims =
        decode_segment(segments[1]).ok_or_else(|| invalid("the claims are not base64url JSON."))?;
    for name in ["iss", "aud"] {
        if claims
            .get(name)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(invalid(&format!("the claim {name} is missing.")));
        }
    }
    let scopes = claims.get("scope").and_then(Value::as_str).unwrap_or("");
    if !scopes
        .split_whitespace()
        .any(|scope| scope == CLOUD_PLATFORM_SCOPE)
    {
        return Err(OAuthError::new(
            "invalid_scope",
            format!("The scope claim must include {CLOUD_PLATFORM_SCOPE}."),
        ));
    }
    let (Some(iat), Some(exp)) = (
        claims.get("iat").and_then(Value::as_i64),
        claims.get("exp").and_then(Value::as_i64),
    ) else {
        return Err(invalid("the claims iat and exp must be integers."));
    };
    let short_lived_and_current = exp > iat
        && exp - iat <= MAX_ASSERTION_LIFETIME_S
        && iat <= now + CLOCK_SKEW_S
        && exp > now - CLOCK_SKEW_S;
    if !short_lived_and_current {
        return Err(invalid(
            "Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        ));
    }
    Ok(())
}

fn decode_segment(segment: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(segment.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(Value::is_object)
}

/// Middleware: lets a request through only with `Authorization: Bearer <token>` for a
/// token this emulator issued (or the configured API key).
pub async fn require_bearer(
    State(tokens): State<Arc<Tokens>>,
    request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let message = match token {
        Some(token) if tokens.accepts(token) => return next.run(request).await,
        Some(_) => {
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential."
        }
        None => {
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential."
        }
    };
    let mut response = GoogleError::new(Code::Unauthenticated, message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
    );
    response
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A JWT with the given claims and a dummy signature (the emulator checks no signature).
    pub(crate) fn assertion(claims: &Value) -> String {
        let encode = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
        format!(
            "{}.{}.c2lnbmF0dXJl",
            encode(&json!({"alg": "RS256", "typ": "JWT"})),
            encode(claims)
        )
    }

    pub(crate) fn claims(now: i64) -> Value {
        json!({
            "iss": "batchline@test-project.iam.gserviceaccount.com",
            "scope": CLOUD_PLATFORM_SCOPE,
            "aud": "http://127.0.0.1/token",
            "iat": now,
            "exp": now + 3600,
        })
    }

    #[test]
    fn accepts_a_well_formed_service_account_assertion() {
        let now = 1_700_000_000;
        assert!(check_assertion(&assertion(&claims(now)), now).is_ok());
    }

    #[test]
    fn rejects_malformed_or_out_of_date_assertions() {
        let now = 1_700_000_000;
        let without = |name: &str| {
            let mut claims = claims(now);
            claims.as_object_mut().unwrap().remove(name);
            assertion(&claims)
        };
        let with = |name: &str, value: Value| {
            let mut claims = claims(now);
            claims[name] = value;
            assertion(&claims)
        };
        let cases = [
            ("two.parts".to_string(), "invalid_grant"),
            ("a.b.".to_string(), "invalid_grant"),
            (without("iss"), "invalid_grant"),
            (without("aud"), "invalid_grant"),
            (without("exp"), "invalid_grant"),
            (without("scope"), "invalid_scope"),
            (
                with(
                    "scope",
                    json!("https://www.googleapis.com/auth/devstorage.read_only"),
                ),
                "invalid_scope",
            ),
            (with("exp", json!(now + 7200)), "invalid_grant"),
            (with("iat", json!(now - 7200)), "invalid_grant"),
        ];
        for (jwt, expected) in cases {
            let error = check_assertion(&jwt, now).expect_err(&jwt);
            assert_eq!(error.error, expected, "{jwt}: {}", error.description);
        }
    }

    #[test]
    fn issued_tokens_and_the_api_key_are_accepted() {
        let tokens = Tokens::new("test-key".to_string());
        let token = tokens.issue();
        assert!(tokens.accepts(&token));
        assert!(tokens.accepts("test-key"));
        assert!(!tokens.accepts("ya29.forged"));
    }
}
