//! API keys from Secrets Manager (`GetSecretValue`) or SSM Parameter Store
//! (`GetParameter`), each one SigV4-signed JSON request over the crate's HTTPS client.
//! These two calls are all the functions need from either service; the full SDK crates
//! for them made every Lambda binary about 1.5 MB larger.
//!
//! A value read here is never logged and never part of an error: errors name the
//! secret and carry AWS's error code and message, which do not echo values.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::provider::config::RetryPolicy;
use crate::provider::http::{backoff, error_chain, is_retryable_status};

/// A throttled or failed call is tried three times in a few seconds; after that the
/// invocation fails and Lambda retries the event.
const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 3,
    base_delay: Duration::from_millis(200),
    max_delay: Duration::from_secs(2),
    max_retry_after: Duration::from_secs(2),
};
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error answer is quoted when it is not AWS's JSON error shape.
const MAX_QUOTED_ERROR: usize = 200;

/// Why a secret could not be read. Never contains the secret's value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(String);

/// Reads secrets and parameters with the credentials, region and endpoint of `sdk`.
#[derive(Clone)]
pub struct SecretReader {
    sdk: aws_types::SdkConfig,
    http: reqwest::Client,
}

impl fmt::Debug for SecretReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretReader")
            .field("region", &self.sdk.region())
            .finish_non_exhaustive()
    }
}

/// One of the two AWS JSON services read from.
#[derive(Clone, Copy)]
enum Service {
    SecretsManager,
    Ssm,
}

impl Service {
    /// The SigV4 signing name, which is also the endpoint's host prefix.
    fn signing_name(self) -> &'static str {
        match self {
            Self::SecretsManager => "secretsmanager",
            Self::Ssm => "ssm",
        }
    }

    fn target_prefix(self) -> &'static str {
        match self {
            Self::SecretsManager => "secretsmanager",
            Self::Ssm => "AmazonSSM",
        }
    }
}

impl SecretReader {
    pub fn new(sdk: aws_types::SdkConfig) -> Result<Self, SecretError> {
        let http = crate::tls::reqwest_builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| SecretError(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { sdk, http })
    }

    /// The `SecretString` of a Secrets Manager secret (ARN or name).
    pub async fn secret_string(&self, secret_id: &str) -> Result<String, SecretError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "SecretString")]
            secret_string: Option<String>,
        }
        let answer: Answer = self
            .call(
                Service::SecretsManager,
                "GetSecretValue",
                json!({ "SecretId": secret_id }),
            )
            .await?;
        answer
            .secret_string
            .ok_or_else(|| SecretError("the secret has no string value".into()))
    }

    /// The decrypted value of an SSM parameter (name or ARN), SecureString or not.
    pub async fn parameter(&self, name: &str) -> Result<String, SecretError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "Parameter")]
            parameter: Option<Parameter>,
        }
        #[derive(Deserialize)]
        struct Parameter {
            #[serde(rename = "Value")]
            value: Option<String>,
        }
        let answer: Answer = self
            .call(
                Service::Ssm,
                "GetParameter",
                json!({ "Name": name, "WithDecryption": true }),
            )
            .await?;
        answer
            .parameter
            .and_then(|p| p.value)
            .ok_or_else(|| SecretError("the parameter has no value".into()))
    }

    /// One AWS JSON 1.1 call, retried on throttling, 5xx and connection failures.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        service: Service,
        operation: &str,
        input: Value,
    ) -> Result<T, SecretError> {
        let body = input.to_string();
        let mut attempt = 1;
        loop {
            match self.send_once(service, operation, &body).await {
                Ok(answer) => {
                    return serde_json::from_slice(&answer).map_err(|e| {
                        SecretError(format!("{operation} answered with unexpected JSON: {e}"))
                    });
                }
                Err(failure) if failure.retryable && attempt < RETRY.max_attempts => {
                    tracing::warn!(operation, attempt, reason = %failure.message, "retrying");
                    tokio::time::sleep(backoff(&RETRY, attempt)).await;
                    attempt += 1;
                }
                Err(failure) => return Err(SecretError(failure.message)),
            }
        }
    }

    async fn send_once(
        &self,
        service: Service,
        operation: &str,
        body: &str,
    ) -> Result<bytes::Bytes, CallFailure> {
        let url = self.endpoint(service)?;
        let target = format!("{}.{operation}", service.target_prefix());
        let content_type = "application/x-amz-json-1.1";
        let headers = [
            ("content-type", content_type),
            ("x-amz-target", target.as_str()),
        ];
        let signed = self
            .signature_headers(service, &url, &headers, body)
            .await?;
        let mut request = self.http.post(&url).body(body.to_string());
        for (name, value) in headers.iter().copied().chain(signed.iter().map(pair)) {
            request = request.header(name, value);
        }
        let response = request.send().await.map_err(|e| CallFailure {
            retryable: true,
            message: format!("{operation} could not be sent: {}", error_chain(&e)),
        })?;
        let status = response.status();
        let answer = response.bytes().await.map_err(|e| CallFailure {
            retryable: true,
            message: format!("reading the {operation} answer: {}", error_chain(&e)),
        })?;
        if status.is_success() {
            return Ok(answer);
        }
        let (code, message) = aws_error(&answer);
        Err(CallFailure {
            // AWS JSON services throttle with a 400 and a `Throttling…` code.
            retryable: is_retryable_status(status) || code.contains("Throttl"),
            message: format!(
                "{operation} failed with HTTP {}: {code}: {message}",
                status.as_u16()
            ),
        })
    }

    /// `AWS_ENDPOINT_URL` when set (moto locally), else the service's regional endpoint.
    fn endpoint(&self, service: Service) -> Result<String, CallFailure> {
        if let Some(url) = self.sdk.endpoint_url() {
            return Ok(format!("{}/", url.trim_end_matches('/')));
        }
        let region = self.region()?;
        let domain = if region.starts_with("cn-") {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        Ok(format!(
            "https://{}.{region}.{domain}/",
            service.signing_name()
        ))
    }

    fn region(&self) -> Result<&str, CallFailure> {
        self.sdk
            .region()
            .map(|r| r.as_ref())
            .ok_or_else(|| CallFailure::fatal("no AWS region is configured (AWS_REGION)"))
    }

    /// The `authorization`, `x-amz-date` and (for temporary credentials)
    /// `x-amz-security-token` headers for this request.
    async fn signature_headers(
        &self,
        service: Service,
        url: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Result<Vec<(String, String)>, CallFailure> {
        let provider = self
            .sdk
            .credentials_provider()
            .ok_or_else(|| CallFailure::fatal("no AWS credentials are configured"))?;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| CallFailure::fatal(format!("loading AWS credentials: {e}")))?;
        let identity = credentials.into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(self.region()?)
            .name(service.signing_name())
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| CallFailure::fatal(format!("signing: {e}")))?
            .into();
        let request = SignableRequest::new(
            "POST",
            url,
            headers.iter().copied(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| CallFailure::fatal(format!("signing: {e}")))?;
        let (instructions, _signature) = sign(request, &params)
            .map_err(|e| CallFailure::fatal(format!("signing: {e}")))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect())
    }
}

struct CallFailure {
    retryable: bool,
    message: String,
}

impl CallFailure {
    fn fatal(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }
}

fn pair((name, value): &(String, String)) -> (&str, &str) {
    (name, value)
}

/// AWS JSON errors: `{"__type": "…#ResourceNotFoundException", "message": "…"}`
/// (the field is `Message` in some services).
fn aws_error(body: &[u8]) -> (String, String) {
    #[derive(Deserialize)]
    struct ErrorBody {
        #[serde(rename = "__type")]
        kind: Option<String>,
        #[serde(alias = "Message")]
        message: Option<String>,
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(error) => (
            error
                .kind
                .map(|kind| kind.rsplit('#').next().unwrap_or_default().to_string())
                .unwrap_or_else(|| "UnknownError".into()),
            error.message.unwrap_or_default(),
        ),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let quoted: String = text.chars().take(MAX_QUOTED_ERROR).collect();
            ("UnknownError".into(), quoted)
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;

    use super::*;

    #[test]
    fn aws_errors_give_the_short_code_and_message() {
        let body = br#"{"__type":"com.amazonaws.secretsmanager#ResourceNotFoundException","Message":"Secrets Manager can't find the specified secret."}"#;
        assert_eq!(
            aws_error(body),
            (
                "ResourceNotFoundException".to_string(),
                "Secrets Manager can't find the specified secret.".to_string()
            )
        );
        let body = br#"{"__type":"ParameterNotFound","message":""}"#;
        assert_eq!(aws_error(body).0, "ParameterNotFound");
        assert_eq!(aws_error(b"<html>busy</html>").1, "<html>busy</html>");
    }

    #[tokio::test]
    async fn endpoints_follow_the_region_unless_overridden() {
        let credentials =
            || SharedCredentialsProvider::new(Credentials::new("id", "secret", None, None, "test"));
        let sdk = |region: &str| crate::aws::sdk_config(region, credentials(), None);
        let reader = SecretReader::new(sdk("eu-west-1")).unwrap();
        assert_eq!(
            reader.endpoint(Service::Ssm).ok().unwrap(),
            "https://ssm.eu-west-1.amazonaws.com/"
        );
        let reader = SecretReader::new(sdk("cn-north-1")).unwrap();
        assert_eq!(
            reader.endpoint(Service::SecretsManager).ok().unwrap(),
            "https://secretsmanager.cn-north-1.amazonaws.com.cn/"
        );
        let local =
            crate::aws::sdk_config("us-east-1", credentials(), Some("http://127.0.0.1:5000"));
        let reader = SecretReader::new(local).unwrap();
        assert_eq!(
            reader.endpoint(Service::Ssm).ok().unwrap(),
            "http://127.0.0.1:5000/"
        );
    }
}
