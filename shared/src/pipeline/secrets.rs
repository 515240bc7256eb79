//! API keys from Secrets Manager (`GetSecretValue`) or SSM Parameter Store
//! (`GetParameter`, decrypted), through the official SDK clients on the crate's AWS
//! configuration and HTTPS client ([`crate::aws`]).
//!
//! A value read here is never logged and never part of an error: errors name the
//! operation and carry AWS's error code and message, which do not echo values, and the
//! SDK marks both operations' output as sensitive (not logged even at trace level,
//! `*** Sensitive Data Redacted ***` in its `Debug`).

use std::fmt;
use std::time::Duration;

use aws_sdk_secretsmanager::config::http::HttpResponse;
use aws_sdk_secretsmanager::config::retry::RetryConfig;
use aws_sdk_secretsmanager::config::timeout::TimeoutConfig;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_types::SdkConfig;

/// A throttled or failed call is tried three times in a few seconds; after that the
/// invocation fails and Lambda retries the event.
const MAX_ATTEMPTS: u32 = 3;
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest wait for one attempt's answer.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of an error answer is quoted when it carries no AWS error code.
const MAX_QUOTED_ERROR: usize = 200;

/// Why a secret could not be read. Never contains the secret's value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The service answered with an error (not found, access denied, throttled after
    /// every retry, …).
    #[error("{operation} failed with HTTP {status}: {code}: {message}")]
    Service {
        /// `GetSecretValue` or `GetParameter`.
        operation: &'static str,
        /// The HTTP status of the last answer.
        status: u16,
        /// AWS's short error code, e.g. `ResourceNotFoundException`.
        code: String,
        /// AWS's error message (or the start of the body when it has no code).
        message: String,
    },
    /// No answer came back: connection, timeout, credentials or configuration.
    #[error("{operation} could not be sent: {reason}")]
    Unreachable {
        /// `GetSecretValue` or `GetParameter`.
        operation: &'static str,
        /// The SDK's description of the failure, with its causes.
        reason: String,
    },
    /// The secret is binary or the parameter is empty.
    #[error("{operation} answered without a string value")]
    NoValue {
        /// `GetSecretValue` or `GetParameter`.
        operation: &'static str,
    },
}

/// Reads secrets and parameters with the credentials, region and endpoint of an SDK
/// configuration (`AWS_ENDPOINT_URL` when set, else each service's regional endpoint).
#[derive(Clone)]
pub struct SecretReader {
    secrets_manager: aws_sdk_secretsmanager::Client,
    ssm: aws_sdk_ssm::Client,
}

impl fmt::Debug for SecretReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretReader")
            .field("region", &self.ssm.config().region())
            .finish_non_exhaustive()
    }
}

impl SecretReader {
    /// Clients for both services from `sdk`, with this module's retries and timeout.
    /// Nothing is sent before the first read.
    pub fn new(sdk: &SdkConfig) -> Self {
        let sdk = sdk
            .to_builder()
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(INITIAL_BACKOFF)
                    .with_max_backoff(MAX_BACKOFF),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .build();
        Self {
            secrets_manager: aws_sdk_secretsmanager::Client::new(&sdk),
            ssm: aws_sdk_ssm::Client::new(&sdk),
        }
    }

    /// The `SecretString` of a Secrets Manager secret (ARN or name).
    pub async fn secret_string(&self, secret_id: &str) -> Result<String, SecretError> {
        const OPERATION: &str = "GetSecretValue";
        self.secrets_manager
            .get_secret_value()
            .secret_id(secret_id)
            .send()
            .await
            .map_err(|e| failure(OPERATION, &e))?
            .secret_string
            .ok_or(SecretError::NoValue {
                operation: OPERATION,
            })
    }

    /// The decrypted value of an SSM parameter (name or ARN), SecureString or not.
    pub async fn parameter(&self, name: &str) -> Result<String, SecretError> {
        const OPERATION: &str = "GetParameter";
        self.ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| failure(OPERATION, &e))?
            .parameter
            .and_then(|p| p.value)
            .ok_or(SecretError::NoValue {
                operation: OPERATION,
            })
    }
}

/// The error of a call after the SDK's retries: AWS's code and message when the
/// service answered with an error, else the SDK's account of what went wrong. A
/// successful answer that could not be read is never quoted: it holds the value.
fn failure<E>(operation: &'static str, error: &SdkError<E, HttpResponse>) -> SecretError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let (raw, code, message) = match error {
        SdkError::ServiceError(context) => {
            (context.raw(), context.err().code(), context.err().message())
        }
        SdkError::ResponseError(context) => (context.raw(), None, None),
        _ => {
            return SecretError::Unreachable {
                operation,
                reason: DisplayErrorContext(error).to_string(),
            };
        }
    };
    let status = raw.status();
    let message = match (code, message) {
        (Some(_), message) => message.unwrap_or_default().to_string(),
        (None, _) if status.is_success() => "the answer could not be read".to_string(),
        (None, _) => {
            let body = String::from_utf8_lossy(raw.body().bytes().unwrap_or_default());
            body.chars().take(MAX_QUOTED_ERROR).collect()
        }
    };
    SecretError::Service {
        operation,
        status: status.as_u16(),
        code: code.unwrap_or("UnknownError").to_string(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const VALUE: &str = "sk-batchline-FAKE-secret-value";

    /// A local endpoint that answers each request with the next of `answers` (status,
    /// body), repeating the last; counts the requests.
    async fn scripted_endpoint(answers: Vec<(u16, &'static str)>) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let (status, body) = answers[n.min(answers.len() - 1)];
                tokio::spawn(async move {
                    read_request(&mut stream).await;
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/x-amz-json-1.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                });
            }
        });
        (url, count)
    }

    /// Reads one request: headers, then `content-length` bytes of body.
    async fn read_request(stream: &mut tokio::net::TcpStream) {
        let mut data = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let Ok(n) = stream.read(&mut buffer).await else {
                return;
            };
            if n == 0 {
                return;
            }
            data.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&data).to_ascii_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if data.len() >= end + 4 + length {
                    return;
                }
            }
        }
    }

    fn reader(url: &str) -> SecretReader {
        let credentials =
            SharedCredentialsProvider::new(Credentials::new("id", "secret", None, None, "test"));
        SecretReader::new(&crate::aws::sdk_config("us-east-1", credentials, Some(url)))
    }

    #[tokio::test]
    async fn throttled_and_failed_calls_are_retried() {
        let success = r#"{"Name":"k","SecretString":"sk-batchline-FAKE-secret-value"}"#;
        let (url, count) = scripted_endpoint(vec![
            (
                400,
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
            ),
            (503, "busy"),
            (200, success),
        ])
        .await;
        assert_eq!(reader(&url).secret_string("k").await.unwrap(), VALUE);
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn errors_give_the_operation_status_code_and_message_and_stop_retrying() {
        let (url, count) = scripted_endpoint(vec![(
            400,
            r#"{"__type":"com.amazonaws.secretsmanager#ResourceNotFoundException","Message":"Secrets Manager can't find the specified secret."}"#,
        )])
        .await;
        let error = reader(&url).secret_string("k").await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "GetSecretValue failed with HTTP 400: ResourceNotFoundException: Secrets Manager can't find the specified secret."
        );
        assert_eq!(count.load(Ordering::SeqCst), 1, "not retried");

        let (url, count) = scripted_endpoint(vec![(500, "<html>down</html>")]).await;
        let error = reader(&url).parameter("/k").await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "GetParameter failed with HTTP 500: UnknownError: <html>down</html>"
        );
        assert_eq!(count.load(Ordering::SeqCst), MAX_ATTEMPTS as usize);
    }

    #[tokio::test]
    async fn parameters_are_read_and_values_never_printed() {
        let (url, _) = scripted_endpoint(vec![(
            200,
            r#"{"Parameter":{"Name":"/k","Type":"SecureString","Value":"sk-batchline-FAKE-secret-value","Version":1}}"#,
        )])
        .await;
        let reader = reader(&url);
        assert_eq!(reader.parameter("/k").await.unwrap(), VALUE);
        assert!(!format!("{reader:?}").contains(VALUE));

        let (url, _) = scripted_endpoint(vec![(
            200,
            r#"{"Parameter":{"Value":"sk-batchline-FAKE-secret-value""#,
        )])
        .await;
        let error = self::reader(&url).parameter("/k").await.unwrap_err();
        assert!(!error.to_string().contains(VALUE), "{error}");

        let (url, _) = scripted_endpoint(vec![(200, r#"{"Parameter":{"Name":"/k"}}"#)]).await;
        assert!(matches!(
            self::reader(&url).parameter("/k").await,
            Err(SecretError::NoValue {
                operation: "GetParameter"
            })
        ));
    }
}
