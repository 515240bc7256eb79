//! Vertex AI's configuration: project, region, bucket, Cloud Storage and credentials.

use std::path::PathBuf;

use url::Url;

use crate::error::{Error, Result};
use crate::provider::config::{
    Credential, GoogleCredentials, ProviderConfig, Variables, VertexSettings, parse_base_url,
};

/// The region used when `GOOGLE_CLOUD_LOCATION` is unset.
pub const DEFAULT_VERTEX_LOCATION: &str = "us-central1";
/// The Cloud Storage root used when `GCS_BASE_URL` is unset.
pub const DEFAULT_STORAGE_BASE_URL: &str = "https://storage.googleapis.com";

// Defined here rather than in `provider/config.rs`, which knows no provider.
impl ProviderConfig {
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
}

/// Reads the Vertex AI variables (see [`super::Vertex`]).
pub(super) fn from_variables(vars: &Variables<'_>) -> Result<ProviderConfig> {
    let storage = vars
        .get("GCS_BASE_URL")
        .unwrap_or_else(|| DEFAULT_STORAGE_BASE_URL.to_string());
    let credentials = match (
        vars.get(CREDENTIALS_JSON),
        vars.get("GOOGLE_ACCESS_TOKEN"),
        vars.get("GOOGLE_APPLICATION_CREDENTIALS"),
    ) {
        (Some(json), _, _) => GoogleCredentials::ServiceAccountJson(Credential::new(json)?),
        (None, Some(token), _) => GoogleCredentials::StaticToken(Credential::new(token)?),
        (None, None, Some(path)) => GoogleCredentials::ServiceAccountFile(PathBuf::from(path)),
        (None, None, None) => GoogleCredentials::MetadataServer,
    };
    let settings = VertexSettings {
        project: vars.required("GOOGLE_CLOUD_PROJECT")?,
        location: vars
            .get("GOOGLE_CLOUD_LOCATION")
            .unwrap_or_else(|| DEFAULT_VERTEX_LOCATION.to_string()),
        bucket: vars.required("GCS_BUCKET")?,
        storage_base_url: parse_base_url("GCS_BASE_URL", &storage)?,
        credentials,
    };
    ProviderConfig::vertex(vars.get("VERTEX_BASE_URL").as_deref(), settings)
}

/// The service account's JSON itself, read from a secret store (`GOOGLE_CREDENTIALS_SECRET_ARN`
/// in the Lambda functions); wins over the other credentials.
pub(super) const CREDENTIALS_JSON: &str = "GOOGLE_CREDENTIALS";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProviderKind;
    use crate::provider::config::lookup;

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<ProviderConfig> {
        from_variables(&Variables::new(ProviderKind::Vertex, &lookup))
    }

    #[test]
    fn vertex_defaults_and_overrides() {
        let base = [("GOOGLE_CLOUD_PROJECT", "p1"), ("GCS_BUCKET", "b1")];
        let config = from_lookup(lookup(&base)).unwrap();
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
        let config = from_lookup(lookup(&vars)).unwrap();
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
        let config = from_lookup(lookup(&vars)).unwrap();
        assert_eq!(config.base_url.as_str(), "http://127.0.0.1:8/");

        let err = from_lookup(lookup(&base[..1])).unwrap_err();
        assert!(err.to_string().contains("GCS_BUCKET"), "{err}");
        let bad_location = [("GOOGLE_CLOUD_LOCATION", "us/../evil")];
        let err = from_lookup(lookup(&[base[0], base[1], bad_location[0]])).unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
    }

    #[test]
    fn service_account_json_wins_over_the_other_credentials() {
        let vars = [
            ("GOOGLE_CLOUD_PROJECT", "p1"),
            ("GCS_BUCKET", "b1"),
            ("GOOGLE_ACCESS_TOKEN", "t"),
            (CREDENTIALS_JSON, "{}"),
        ];
        let vertex = from_lookup(lookup(&vars)).unwrap().vertex.unwrap();
        assert_eq!(
            vertex.credentials,
            GoogleCredentials::ServiceAccountJson(Credential::new("{}").unwrap())
        );
    }
}
