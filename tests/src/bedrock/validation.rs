//! What `CreateModelInvocationJob` checks in its request (the constraints of botocore's
//! model, worded as AWS words them), the model ids the emulator serves, and the checks
//! a record's `modelInput` gets before it runs.

use serde_json::{Map, Value, json};

use crate::anthropic::check_message_params;
use crate::model::check_cache_control;

use super::converse;
use super::{ApiError, ApiResult};

/// Bedrock model ids that serve batch inference, as listed in the Bedrock user guide
/// ("Supported Regions and models for batch inference") in late 2026. The cross-region
/// inference profiles (`us.`, `eu.`, `apac.`, `global.` before an id) are served too.
pub(super) const MODEL_IDS: [&str; 19] = [
    "anthropic.claude-opus-4-5-20251101-v1:0",
    "anthropic.claude-sonnet-4-5-20250929-v1:0",
    "anthropic.claude-haiku-4-5-20251001-v1:0",
    "anthropic.claude-opus-4-1-20250805-v1:0",
    "anthropic.claude-sonnet-4-20250514-v1:0",
    "anthropic.claude-3-7-sonnet-20250219-v1:0",
    "anthropic.claude-3-5-haiku-20241022-v1:0",
    "anthropic.claude-3-5-sonnet-20241022-v2:0",
    "anthropic.claude-3-haiku-20240307-v1:0",
    "amazon.nova-premier-v1:0",
    "amazon.nova-pro-v1:0",
    "amazon.nova-lite-v1:0",
    "amazon.nova-micro-v1:0",
    "meta.llama3-3-70b-instruct-v1:0",
    "meta.llama3-1-70b-instruct-v1:0",
    "meta.llama3-1-8b-instruct-v1:0",
    "mistral.mistral-large-2407-v1:0",
    "mistral.mistral-small-2402-v1:0",
    "openai.gpt-oss-120b-1:0",
];

const INFERENCE_PROFILE_PREFIXES: [&str; 4] = ["us.", "eu.", "apac.", "global."];

/// The timeout a job gets when the request names none, in hours.
pub(super) const DEFAULT_TIMEOUT_HOURS: u64 = 168;
const JOB_NAME_PATTERN: &str = r"[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}";
const ROLE_ARN_PATTERN: &str = "arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+";
const TOKEN_PATTERN: &str = "[a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}";
const S3_URI_PATTERN: &str =
    "s3://[a-z0-9][-.a-z0-9]{1,61}[a-z0-9](?:/[-!_*'().a-z0-9A-Z]+(?:/[-!_*'().a-z0-9A-Z]+)*)?/?";
const TAG_PATTERN: &str = r"[a-zA-Z0-9\s._:/=+@-]*";
/// The job statuses, as `statusEquals` takes them.
pub(super) const STATUSES: [&str; 10] = [
    "Submitted",
    "InProgress",
    "Completed",
    "Failed",
    "Stopping",
    "Stopped",
    "PartiallyCompleted",
    "Expired",
    "Validating",
    "Scheduled",
];

/// A served model: the id the job names and what the emulated model is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Model {
    /// The provider part of the id: `anthropic`, `amazon`, `meta`, …
    pub(super) provider: String,
    /// The model's own name, e.g. `claude-sonnet-4-5-20250929` (what Claude answers
    /// carry as `model`).
    pub(super) name: String,
}

impl Model {
    /// The model a `modelId` names: a served id, an inference profile of one, or the
    /// ARN of either.
    pub(super) fn find(model_id: &str) -> Option<Self> {
        let id = model_id
            .rsplit_once(":foundation-model/")
            .or_else(|| model_id.rsplit_once(":inference-profile/"))
            .map_or(model_id, |(_, id)| id);
        let base = INFERENCE_PROFILE_PREFIXES
            .iter()
            .find_map(|prefix| id.strip_prefix(prefix))
            .unwrap_or(id);
        if !MODEL_IDS.contains(&base) {
            return None;
        }
        let (provider, rest) = base.split_once('.')?;
        // `claude-sonnet-4-5-20250929-v1:0` is called `claude-sonnet-4-5-20250929`.
        let name = rest
            .rsplit_once("-v")
            .filter(|(_, version)| version.contains(':'))
            .map_or(rest, |(name, _)| name);
        Some(Self {
            provider: provider.to_string(),
            name: name.to_string(),
        })
    }

    pub(super) fn is_claude(&self) -> bool {
        self.provider == "anthropic"
    }
}

/// How the records' `modelInput` is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum InvocationType {
    /// The model's InvokeModel body (for Claude: a Messages body).
    InvokeModel,
    /// A Converse request.
    Converse,
}

/// A create request that passed the checks.
#[derive(Debug, Clone)]
pub(super) struct JobSpec {
    pub(super) job_name: String,
    pub(super) role_arn: String,
    pub(super) client_request_token: Option<String>,
    pub(super) model_id: String,
    pub(super) model: Model,
    pub(super) input_data_config: Value,
    pub(super) output_data_config: Value,
    pub(super) vpc_config: Option<Value>,
    pub(super) input_uri: String,
    pub(super) output_uri: String,
    pub(super) timeout_hours: u64,
    pub(super) tags: Vec<Value>,
    pub(super) invocation_type: InvocationType,
}

/// The constraint violations of one request, reported together as AWS does.
#[derive(Default)]
struct Violations(Vec<String>);

impl Violations {
    fn add(&mut self, value: &Value, at: &str, constraint: impl AsRef<str>) {
        let shown = match value {
            Value::Null => "null".to_string(),
            Value::String(text) => format!("'{text}'"),
            other => format!("'{other}'"),
        };
        self.0.push(format!(
            "Value {shown} at '{at}' failed to satisfy constraint: Member must {}",
            constraint.as_ref()
        ));
    }

    fn pattern(&mut self, value: &Value, at: &str, pattern: &str) {
        self.add(
            value,
            at,
            format!("satisfy regular expression pattern: {pattern}"),
        );
    }

    fn into_result(self) -> ApiResult<()> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(ApiError::validation(format!(
                "1 validation error detected: {}",
                self.0[0]
            ))),
            n => Err(ApiError::validation(format!(
                "{n} validation errors detected: {}",
                self.0.join("; ")
            ))),
        }
    }
}

/// `[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}` within 63 characters: an alphanumeric,
/// then alphanumerics, `+`, `-` and `.`.
pub(super) fn is_job_name(name: &str) -> bool {
    let mut chars = name.chars();
    (1..=63).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// `[a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}`: alphanumerics and dashes, starting and
/// ending with an alphanumeric.
fn is_token(token: &str) -> bool {
    (1..=256).contains(&token.len())
        && token.starts_with(|c: char| c.is_ascii_alphanumeric())
        && token.ends_with(|c: char| c.is_ascii_alphanumeric())
        && token.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// `arn:aws(-[^:]+)?:iam::([0-9]{12})?:role/.+`.
fn is_role_arn(arn: &str) -> bool {
    let Some(rest) = arn.strip_prefix("arn:aws") else {
        return false;
    };
    let rest = match rest.strip_prefix('-') {
        Some(partition) => match partition.split_once(':') {
            Some((name, rest)) if !name.is_empty() => rest,
            _ => return false,
        },
        None => match rest.strip_prefix(':') {
            Some(rest) => rest,
            None => return false,
        },
    };
    let Some(rest) = rest.strip_prefix("iam::") else {
        return false;
    };
    let (account, role) = rest.split_once(":role/").unwrap_or(("x", ""));
    (account.is_empty() || (account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit())))
        && !role.is_empty()
        && arn.len() <= 2048
}

/// The bucket and key of an `s3://` URI matching botocore's `S3Uri` pattern.
pub(super) fn parse_s3_uri(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    let segments = key.strip_suffix('/').unwrap_or(key);
    let key_ok = segments.is_empty()
        || segments.split('/').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-!_*'().".contains(&b))
        });
    (bucket_ok && key_ok && uri.len() <= 1024).then_some((bucket, key))
}

fn is_tag_text(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_alphanumeric() || c.is_whitespace() || "._:/=+@-".contains(c))
}

impl JobSpec {
    /// Checks a `CreateModelInvocationJob` body.
    pub(super) fn parse(body: &Value) -> ApiResult<Self> {
        let Some(body) = body.as_object() else {
            return Err(ApiError::validation(
                "The request body must be a JSON object.",
            ));
        };
        let null = Value::Null;
        let get = |name: &str| body.get(name).unwrap_or(&null);
        let mut violations = Violations::default();
        let text =
            |violations: &mut Violations, name: &str, check: fn(&str) -> bool, pattern: &str| {
                match get(name) {
                    Value::Null => {
                        violations.add(&Value::Null, name, "not be null");
                        String::new()
                    }
                    Value::String(value) if check(value) => value.clone(),
                    other => {
                        violations.pattern(other, name, pattern);
                        String::new()
                    }
                }
            };
        let job_name = text(&mut violations, "jobName", is_job_name, JOB_NAME_PATTERN);
        let role_arn = text(&mut violations, "roleArn", is_role_arn, ROLE_ARN_PATTERN);
        let client_request_token = match get("clientRequestToken") {
            Value::Null => None,
            Value::String(token) if is_token(token) => Some(token.clone()),
            other => {
                violations.pattern(other, "clientRequestToken", TOKEN_PATTERN);
                None
            }
        };
        let model_id = match get("modelId") {
            Value::String(id) if !id.is_empty() && id.len() <= 2048 => id.clone(),
            Value::Null => {
                violations.add(&Value::Null, "modelId", "not be null");
                String::new()
            }
            other => {
                violations.add(other, "modelId", "have length between 1 and 2048");
                String::new()
            }
        };
        let input_uri = s3_config(
            &mut violations,
            get("inputDataConfig"),
            "inputDataConfig",
            "s3InputDataConfig",
        );
        let output_uri = s3_config(
            &mut violations,
            get("outputDataConfig"),
            "outputDataConfig",
            "s3OutputDataConfig",
        );
        if let Some(format) = get("inputDataConfig").pointer("/s3InputDataConfig/s3InputFormat")
            && format != "JSONL"
        {
            violations.add(
                format,
                "inputDataConfig.s3InputDataConfig.s3InputFormat",
                "satisfy enum value set: [JSONL]",
            );
        }
        let timeout_hours = match get("timeoutDurationInHours") {
            Value::Null => DEFAULT_TIMEOUT_HOURS,
            value => match value.as_u64() {
                Some(hours) if (24..=168).contains(&hours) => hours,
                _ => {
                    let constraint = if value.as_i64().is_some_and(|h| h > 168) {
                        "have value less than or equal to 168"
                    } else {
                        "have value greater than or equal to 24"
                    };
                    violations.add(value, "timeoutDurationInHours", constraint);
                    DEFAULT_TIMEOUT_HOURS
                }
            },
        };
        let tags = check_tags(&mut violations, get("tags"));
        let invocation_type = match get("modelInvocationType") {
            Value::Null => InvocationType::InvokeModel,
            Value::String(kind) if kind == "InvokeModel" => InvocationType::InvokeModel,
            Value::String(kind) if kind == "Converse" => InvocationType::Converse,
            other => {
                violations.add(
                    other,
                    "modelInvocationType",
                    "satisfy enum value set: [InvokeModel, Converse]",
                );
                InvocationType::InvokeModel
            }
        };
        violations.into_result()?;
        let model = Model::find(&model_id)
            .ok_or_else(|| ApiError::validation("The provided model identifier is invalid."))?;
        let with_format = |config: &Value| {
            let mut config = config.clone();
            if let Some(s3) = config
                .get_mut("s3InputDataConfig")
                .and_then(Value::as_object_mut)
            {
                s3.entry("s3InputFormat").or_insert(json!("JSONL"));
            }
            config
        };
        Ok(Self {
            job_name,
            role_arn,
            client_request_token,
            model_id,
            model,
            input_data_config: with_format(get("inputDataConfig")),
            output_data_config: get("outputDataConfig").clone(),
            vpc_config: body.get("vpcConfig").cloned(),
            input_uri,
            output_uri,
            timeout_hours,
            tags,
            invocation_type,
        })
    }
}

/// The `s3Uri` of a one-member union `{"<member>": {"s3Uri": …}}` at `at`.
fn s3_config(violations: &mut Violations, config: &Value, at: &str, member: &str) -> String {
    let Some(s3) = config.get(member) else {
        violations.add(config, &format!("{at}.{member}"), "not be null");
        return String::new();
    };
    let uri = s3.get("s3Uri").unwrap_or(&Value::Null);
    match uri.as_str() {
        Some(text) if parse_s3_uri(text).is_some() => text.to_string(),
        _ => {
            violations.pattern(uri, &format!("{at}.{member}.s3Uri"), S3_URI_PATTERN);
            String::new()
        }
    }
}

/// `tags`: at most 200 `{"key", "value"}` objects.
fn check_tags(violations: &mut Violations, tags: &Value) -> Vec<Value> {
    let tags = match tags {
        Value::Null => return Vec::new(),
        Value::Array(tags) if tags.len() <= 200 => tags,
        other => {
            violations.add(other, "tags", "have length less than or equal to 200");
            return Vec::new();
        }
    };
    for (index, tag) in tags.iter().enumerate() {
        let key = tag.get("key").unwrap_or(&Value::Null);
        let value = tag.get("value").unwrap_or(&Value::Null);
        let at = |field: &str| format!("tags.{}.member.{field}", index + 1);
        match key.as_str() {
            Some(k) if (1..=128).contains(&k.len()) && is_tag_text(k) => {}
            None => violations.add(key, &at("key"), "not be null"),
            Some(_) => violations.pattern(key, &at("key"), TAG_PATTERN),
        }
        match value.as_str() {
            Some(v) if v.len() <= 256 && is_tag_text(v) => {}
            None => violations.add(value, &at("value"), "not be null"),
            Some(_) => violations.pattern(value, &at("value"), TAG_PATTERN),
        }
    }
    tags.clone()
}

/// `jobIdentifier`: a job id (12 lowercase alphanumerics) or its ARN; answers the id.
pub(super) fn job_id_of(identifier: &str) -> ApiResult<&str> {
    let id = match identifier.rsplit_once(":model-invocation-job/") {
        Some((prefix, id)) => {
            let fields: Vec<&str> = prefix.split(':').collect();
            let arn_ok = matches!(fields[..], ["arn", partition, "bedrock", region, account]
                if partition.starts_with("aws") && !region.is_empty()
                    && account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()));
            if !arn_ok {
                return Err(invalid_identifier(identifier));
            }
            id
        }
        None => identifier,
    };
    let id_ok = id.len() == 12
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if id_ok {
        Ok(id)
    } else {
        Err(invalid_identifier(identifier))
    }
}

fn invalid_identifier(identifier: &str) -> ApiError {
    let mut violations = Violations::default();
    violations.pattern(
        &Value::String(identifier.to_string()),
        "jobIdentifier",
        "((arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:model-invocation-job/)?[a-z0-9]{12})",
    );
    violations
        .into_result()
        .expect_err("one violation was added")
}

/// The Anthropic Messages body (with `model` set to the model's name) a record's
/// `modelInput` stands for, or why the record fails (the `errorMessage` of its error
/// record).
pub(super) fn record_params(
    kind: InvocationType,
    model: &Model,
    model_input: &Map<String, Value>,
) -> Result<Map<String, Value>, String> {
    let malformed = |problem: String| {
        format!("Malformed input request: {problem}, please reformat your input and try again.")
    };
    let mut params = match kind {
        InvocationType::Converse => converse::to_messages_params(model_input).map_err(malformed)?,
        InvocationType::InvokeModel if !model.is_claude() => {
            return Err(format!(
                "The emulator runs InvokeModel records for Anthropic Claude models only; write the records of {}.{} as Converse requests (modelInvocationType Converse).",
                model.provider, model.name
            ));
        }
        InvocationType::InvokeModel => {
            match model_input.get("anthropic_version").and_then(Value::as_str) {
                Some("bedrock-2023-05-31") => {}
                Some(other) => {
                    return Err(malformed(format!(
                        "anthropic_version: '{other}' is not a valid version; use 'bedrock-2023-05-31'"
                    )));
                }
                None => {
                    return Err(malformed(
                        "#: required key [anthropic_version] not found".to_string(),
                    ));
                }
            }
            if model_input.contains_key("model") {
                return Err(malformed(
                    "#: extraneous key [model] is not permitted".to_string(),
                ));
            }
            check_message_params(model_input).map_err(malformed)?;
            model_input.clone()
        }
    };
    check_cache_control(&Value::Object(params.clone())).map_err(malformed)?;
    params.insert("model".into(), Value::String(model.name.clone()));
    Ok(params)
}
