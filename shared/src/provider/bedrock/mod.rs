//! Amazon Bedrock batch inference, model prefix `bedrock/` (`bedrock/amazon.nova-lite-v1:0`,
//! `bedrock/us.anthropic.claude-haiku-4-5-20251001-v1:0`). Input and output stay in the
//! pipeline's own S3 bucket; the control plane is signed with SigV4 by the official SDK
//! and no API key exists.
//!
//! A part's records go to `<prefix>input/<job name>.jsonl`; Bedrock writes
//! `<prefix>output/<job id>/<job name>.jsonl.out`, which [`BedrockClient`] streams as the
//! part's results. The job name and the idempotency token both derive from the batch's
//! tags, so a create repeated after a crash or a lost answer finds the same job.

#[cfg(feature = "aws")]
mod client;
pub mod decode;
pub mod encode;

use std::sync::Arc;

use super::config::{AwsCredentials, BedrockSettings, ProviderConfig, Variables, parse_base_url};
use super::contract::{BatchProvider, ProviderDescriptor};
use super::decode::{Decoded, Malformed};
use super::encode::{PartLimits, RequestEncoder};
use crate::error::{Error, Result};
use crate::model::ProviderKind;
use crate::request::{AnswerFormat, GenerationParams};

#[cfg(feature = "aws")]
pub use client::BedrockClient;

/// Amazon Bedrock batch inference. Its variables:
///
/// | Variable | Meaning |
/// |---|---|
/// | `BEDROCK_ROLE_ARN` | the service role Bedrock runs the jobs as (required) |
/// | `BEDROCK_BUCKET` | the bucket for the jobs' input and output (required; the template sets the pipeline's bucket) |
/// | `BEDROCK_PREFIX` | key prefix of the input and output, default `bedrock/` |
/// | `BEDROCK_TIMEOUT_HOURS` | how long a job may run before it expires, 24–168, default 72 |
/// | `AWS_REGION` | the region the jobs run in (Lambda sets it) |
/// | `BEDROCK_ENDPOINT_URL` | the control plane's root, default `https://bedrock.<region>.amazonaws.com` |
/// | `AWS_ENDPOINT_URL` | S3's root when it is not AWS's (moto locally) |
#[derive(Debug)]
pub struct Bedrock;

const KIND: ProviderKind = ProviderKind::Bedrock;

impl ProviderDescriptor for Bedrock {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn display_name(&self) -> &'static str {
        "Amazon Bedrock"
    }

    fn limits(&self) -> PartLimits {
        encode::LIMITS
    }

    fn min_requests(&self) -> usize {
        encode::MIN_RECORDS
    }

    fn encoder(
        &self,
        _model: &str,
        format: &AnswerFormat,
        params: &GenerationParams,
    ) -> Result<Box<dyn RequestEncoder>> {
        Ok(Box::new(encode::ConverseEncoder::new(format, params)?))
    }

    fn decode<'a>(&self, line: &'a [u8]) -> Result<Decoded<'a>, Malformed> {
        decode::decode(line)
    }

    fn decode_text<'a>(&self, line: &'a [u8]) -> Result<Decoded<'a>, Malformed> {
        decode::decode_text(line)
    }

    /// Throttled, timed out, or a server error at the model (the runtime's exceptions).
    fn temporary_error_types(&self) -> &'static [&'static str] {
        &[
            "ThrottlingException",
            "ModelTimeoutException",
            "InternalServerException",
            "ServiceUnavailableException",
        ]
    }

    /// "Input is too long for requested model."
    fn prompt_too_long(&self) -> (&'static str, &'static str) {
        ("ValidationException", "too long")
    }

    /// No secret: the functions' role signs every call.
    fn secret_variables(&self) -> &'static [&'static str] {
        &[]
    }

    fn config(&self, vars: &Variables<'_>) -> Result<ProviderConfig> {
        let region = vars
            .get("AWS_REGION")
            .or_else(|| vars.get("AWS_DEFAULT_REGION"))
            .ok_or_else(|| Error::Config("AWS_REGION is not set (needed for bedrock)".into()))?;
        let endpoint = vars.get("BEDROCK_ENDPOINT_URL");
        let mut prefix = vars
            .get("BEDROCK_PREFIX")
            .unwrap_or_else(|| "bedrock/".to_string());
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let timeout_hours = match vars.get("BEDROCK_TIMEOUT_HOURS") {
            None => DEFAULT_TIMEOUT_HOURS,
            Some(raw) => raw
                .parse()
                .ok()
                .filter(|hours| TIMEOUT_HOURS.contains(hours))
                .ok_or_else(|| {
                    Error::Config(format!(
                        "BEDROCK_TIMEOUT_HOURS={raw:?} is not a whole number of hours from {} to {}",
                        TIMEOUT_HOURS.start(),
                        TIMEOUT_HOURS.end()
                    ))
                })?,
        };
        let settings = BedrockSettings {
            role_arn: vars.required("BEDROCK_ROLE_ARN")?,
            bucket: vars.required("BEDROCK_BUCKET")?,
            prefix,
            s3_endpoint: vars.get("AWS_ENDPOINT_URL"),
            timeout_hours,
            credentials: AwsCredentials::Environment,
            region,
        };
        ProviderConfig::bedrock(endpoint.as_deref(), settings)
    }

    #[cfg(feature = "aws")]
    fn connect(&self, config: &ProviderConfig) -> Result<Arc<dyn BatchProvider>> {
        Ok(Arc::new(BedrockClient::new(config)?))
    }

    #[cfg(not(feature = "aws"))]
    fn connect(&self, _config: &ProviderConfig) -> Result<Arc<dyn BatchProvider>> {
        Err(Error::Config(
            "bedrock needs the library's `aws` feature (the AWS SDK clients)".to_string(),
        ))
    }
}

impl ProviderConfig {
    /// Amazon Bedrock in `settings.region`, its control plane at `base_url` (AWS's
    /// regional endpoint when `None`).
    pub fn bedrock(base_url: Option<&str>, settings: BedrockSettings) -> Result<Self> {
        let default_url = format!("https://bedrock.{}.amazonaws.com", settings.region);
        let base_url = parse_base_url("BEDROCK_ENDPOINT_URL", base_url.unwrap_or(&default_url))?;
        Ok(Self {
            bedrock: Some(settings),
            ..Self::bare(base_url)
        })
    }
}

/// Bedrock's own bounds on `timeoutDurationInHours`.
const TIMEOUT_HOURS: std::ops::RangeInclusive<i32> = 24..=168;

/// Three days, as the pipeline's default deadline for waiting parts.
const DEFAULT_TIMEOUT_HOURS: i32 = 72;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::config::lookup;

    #[test]
    fn config_needs_a_role_and_a_bucket_and_derives_the_endpoint() {
        let vars = [
            ("AWS_REGION", "eu-west-1"),
            ("BEDROCK_ROLE_ARN", "arn:aws:iam::123456789012:role/batch"),
            ("BEDROCK_BUCKET", "jobs"),
            ("BEDROCK_PREFIX", "br"),
        ];
        let config = ProviderConfig::from_lookup(KIND, lookup(&vars)).unwrap();
        assert_eq!(
            config.base_url.as_str(),
            "https://bedrock.eu-west-1.amazonaws.com/"
        );
        let settings = config.bedrock.unwrap();
        assert_eq!(settings.prefix, "br/");
        assert_eq!(settings.timeout_hours, 72);
        assert_eq!(settings.credentials, AwsCredentials::Environment);
        assert!(config.api_key.is_none());

        for missing in ["AWS_REGION", "BEDROCK_ROLE_ARN", "BEDROCK_BUCKET"] {
            let without: Vec<_> = vars.iter().copied().filter(|v| v.0 != missing).collect();
            let err = ProviderConfig::from_lookup(KIND, lookup(&without)).unwrap_err();
            assert!(err.to_string().contains(missing), "{err}");
        }
        for bad in ["12", "169", "two days"] {
            let mut with = vars.to_vec();
            with.push(("BEDROCK_TIMEOUT_HOURS", bad));
            let err = ProviderConfig::from_lookup(KIND, lookup(&with)).unwrap_err();
            assert!(err.to_string().contains("BEDROCK_TIMEOUT_HOURS"), "{err}");
        }
    }
}
