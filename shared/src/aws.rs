//! The AWS SDK configuration the functions run with. Lambda's environment carries all of
//! it (`AWS_REGION`, the role's credentials in `AWS_ACCESS_KEY_ID`, …), so it is read
//! from there instead of through aws-config's provider chain (profiles, SSO, STS, IMDS),
//! which made every binary about 1 MB larger for nothing a function uses.

use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider, future};
use aws_sdk_s3::config::BehaviorVersion;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use aws_types::SdkConfig;
use aws_types::region::Region;

use crate::error::{Error, Result};

/// Region, credentials and endpoint (`AWS_ENDPOINT_URL`, for moto locally) from the
/// environment.
pub fn sdk_config_from_env() -> Result<SdkConfig> {
    let region = env_var("AWS_REGION")
        .or_else(|| env_var("AWS_DEFAULT_REGION"))
        .ok_or_else(|| Error::Config("AWS_REGION is not set".to_string()))?;
    Ok(sdk_config(
        &region,
        environment_credentials(),
        env_var("AWS_ENDPOINT_URL").as_deref(),
    ))
}

/// The credentials in the environment (Lambda's role), read at each use.
pub fn environment_credentials() -> SharedCredentialsProvider {
    SharedCredentialsProvider::new(EnvironmentCredentials)
}

/// An SDK configuration with the crate's HTTPS client (rustls on ring). Retries,
/// timeouts and the async sleep are the SDK clients' defaults for this behavior version.
pub fn sdk_config(
    region: &str,
    credentials: SharedCredentialsProvider,
    endpoint_url: Option<&str>,
) -> SdkConfig {
    let mut config = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .credentials_provider(credentials)
        .http_client(https_client());
    if let Some(url) = endpoint_url {
        config = config.endpoint_url(url);
    }
    config.build()
}

/// The SDK's HTTPS client on the crate's TLS stack (rustls on ring), for other SDK
/// configurations (the operator CLI's aws-config loader).
pub fn https_client() -> aws_types::sdk_config::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The credentials Lambda puts in the environment, read at each use as the SDK's own
/// environment provider does.
#[derive(Debug)]
struct EnvironmentCredentials;

impl ProvideCredentials for EnvironmentCredentials {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        future::ProvideCredentials::ready(
            match (
                env_var("AWS_ACCESS_KEY_ID"),
                env_var("AWS_SECRET_ACCESS_KEY"),
            ) {
                (Some(id), Some(secret)) => Ok(Credentials::new(
                    id,
                    secret,
                    env_var("AWS_SESSION_TOKEN"),
                    None,
                    "environment",
                )),
                _ => Err(CredentialsError::not_loaded(
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set (Lambda sets them from the function's role)",
                )),
            },
        )
    }
}
