//! The checks a Vertex create call makes on the job it asks for.

use serde_json::{Map, Value};

use crate::catalogue::is_vertex_model;
use crate::gcs::parse_gs_uri;
use crate::google::{GoogleError, field, validate_labels};

const MAX_DISPLAY_NAME: usize = 128;

/// What the create call asked for, validated.
pub(super) struct JobSpec {
    pub(super) display_name: String,
    /// `publishers/google/models/{model}` as sent.
    pub(super) model: String,
    /// The `{model}` part.
    pub(super) model_id: String,
    pub(super) input_config: Value,
    pub(super) input_uris: Vec<String>,
    pub(super) output_config: Value,
    pub(super) output_prefix: String,
    pub(super) labels: Map<String, Value>,
}

impl JobSpec {
    pub(super) fn parse(body: &Value) -> Result<Self, GoogleError> {
        let display_name = field(body, "displayName")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .ok_or_else(|| GoogleError::invalid("BatchPredictionJob.display_name must be set."))?;
        if display_name.chars().count() > MAX_DISPLAY_NAME {
            return Err(GoogleError::invalid(format!(
                "BatchPredictionJob.display_name must be at most {MAX_DISPLAY_NAME} characters."
            )));
        }
        let model = field(body, "model").and_then(Value::as_str).unwrap_or("");
        let model_id = publisher_model(model)?;

        let input_config = field(body, "inputConfig")
            .filter(|c| c.is_object())
            .ok_or_else(|| GoogleError::invalid("BatchPredictionJob.input_config must be set."))?;
        let instances_format = field(input_config, "instancesFormat").and_then(Value::as_str);
        if instances_format != Some("jsonl") {
            return Err(GoogleError::invalid(format!(
                "Unsupported instances_format {instances_format:?}: the emulator reads \"jsonl\" from Cloud Storage."
            )));
        }
        let input_uris: Vec<String> = field(input_config, "gcsSource")
            .and_then(|source| field(source, "uris"))
            .and_then(Value::as_array)
            .map(|uris| {
                uris.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        if input_uris.is_empty() {
            return Err(GoogleError::invalid(
                "BatchPredictionJob.input_config.gcs_source.uris must name at least one object.",
            ));
        }
        if let Some(bad) = input_uris
            .iter()
            .find(|uri| parse_gs_uri(uri).is_none_or(|(_, object)| object.is_empty()))
        {
            return Err(GoogleError::invalid(format!(
                "Invalid Cloud Storage URI: {bad}"
            )));
        }

        let output_config = field(body, "outputConfig")
            .filter(|c| c.is_object())
            .ok_or_else(|| GoogleError::invalid("BatchPredictionJob.output_config must be set."))?;
        let predictions_format = field(output_config, "predictionsFormat").and_then(Value::as_str);
        if predictions_format != Some("jsonl") {
            return Err(GoogleError::invalid(format!(
                "Unsupported predictions_format {predictions_format:?}: the emulator writes \"jsonl\" to Cloud Storage."
            )));
        }
        let output_prefix = field(output_config, "gcsDestination")
            .and_then(|destination| field(destination, "outputUriPrefix"))
            .and_then(Value::as_str)
            .filter(|prefix| parse_gs_uri(prefix).is_some())
            .ok_or_else(|| {
                GoogleError::invalid(
                    "BatchPredictionJob.output_config.gcs_destination.output_uri_prefix must be a gs:// URI.",
                )
            })?;

        let labels = match field(body, "labels") {
            None => Map::new(),
            Some(labels) => {
                validate_labels(labels)?;
                labels.as_object().cloned().unwrap_or_default()
            }
        };
        Ok(Self {
            display_name: display_name.to_string(),
            model: model.to_string(),
            model_id,
            input_config: input_config.clone(),
            input_uris,
            output_config: output_config.clone(),
            output_prefix: output_prefix.trim_end_matches('/').to_string(),
            labels,
        })
    }
}

/// The `{model}` of `publishers/google/models/{model}` (optionally under
/// `projects/{p}/locations/{l}/`). Whether that model exists is checked at create
/// ([`check_model_exists`]), where the project and location are known.
fn publisher_model(model: &str) -> Result<String, GoogleError> {
    let unqualified = match model.strip_prefix("projects/") {
        Some(rest) => rest.splitn(4, '/').nth(3).unwrap_or(""),
        None => model,
    };
    let id = unqualified
        .strip_prefix("publishers/google/models/")
        .filter(|id| {
            !id.is_empty()
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._@".contains(c))
        })
        .ok_or_else(|| {
            GoogleError::invalid(format!(
                "Invalid model {model:?}: expected publishers/google/models/{{model}}."
            ))
        })?;
    Ok(id.to_string())
}

/// Vertex fails the create call of a job for a publisher model it does not serve
/// ([`crate::catalogue::VERTEX_MODELS`]) with 404 `NOT_FOUND`, naming the model under
/// the caller's project and location.
pub(super) fn check_model_exists(model_id: &str, parent: &str) -> Result<(), GoogleError> {
    if is_vertex_model(model_id) {
        return Ok(());
    }
    Err(GoogleError::not_found(format!(
        "Publisher Model `{parent}/publishers/google/models/{model_id}` was not found or your project does not have access to it. Please ensure you are using a valid model version. For more information, see: https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions"
    )))
}
