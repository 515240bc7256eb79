//! `provider/model` strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A model string that is not `provider/model` with a known provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid model {model:?}: {reason}; expected one of openai/<model>, anthropic/<model>, google/<model>, gemini/<model>"
)]
pub struct InvalidModel {
    /// The string as given.
    pub model: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The five batch APIs batchline speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Batch API.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic Message Batches.
    Anthropic,
    /// Google Vertex AI batch prediction (through Cloud Storage). Users write it
    /// `google/<model>`, the name it has always had in job specs.
    #[serde(rename = "google")]
    Vertex,
    /// Gemini Developer API batch mode (API key).
    Gemini,
    /// Amazon Bedrock batch inference (SigV4, input and output in S3).
    Bedrock,
}

impl ProviderKind {
    /// Every provider, in declaration order.
    pub const ALL: [ProviderKind; 5] = [
        Self::OpenAi,
        Self::Anthropic,
        Self::Vertex,
        Self::Gemini,
        Self::Bedrock,
    ];

    /// The names users write before the `/` of a model string, in the order of [`Self::ALL`].
    const NAMES: [&'static str; 5] = ["openai", "anthropic", "google", "gemini", "bedrock"];

    /// The provider's name in model strings, logs and error messages.
    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = InvalidModel;
    fn from_str(s: &str) -> Result<Self, InvalidModel> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| InvalidModel {
                model: s.to_string(),
                reason: format!("unknown provider {s:?}"),
            })
    }
}

/// A parsed `provider/model` string, e.g. `openai/gpt-4o-mini`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    /// The batch API, from the part before the first `/`.
    pub provider: ProviderKind,
    /// The provider's model name, everything after the first `/`.
    pub model: String,
}

impl FromStr for ModelRef {
    type Err = InvalidModel;
    fn from_str(s: &str) -> Result<Self, InvalidModel> {
        let invalid = |reason: &str| InvalidModel {
            model: s.to_string(),
            reason: reason.to_string(),
        };
        let (provider, model) = s
            .split_once('/')
            .ok_or_else(|| invalid("missing the provider/ prefix"))?;
        if model.is_empty() {
            return Err(invalid("empty model name"));
        }
        let provider = provider
            .parse::<ProviderKind>()
            .map_err(|_| invalid(&format!("unknown provider {provider:?}")))?;
        Ok(Self {
            provider,
            model: model.to_string(),
        })
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

impl Serialize for ModelRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ModelRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_order_of_all() {
        for (i, kind) in ProviderKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i);
            assert_eq!(kind.as_str(), ProviderKind::NAMES[i]);
        }
    }

    #[test]
    fn vertex_keeps_the_google_name_users_write() {
        let model: ModelRef = "google/gemini-2.5-flash".parse().unwrap();
        assert_eq!(model.provider, ProviderKind::Vertex);
        assert_eq!(
            serde_json::to_string(&ProviderKind::Vertex).unwrap(),
            r#""google""#
        );
        assert_eq!(model.to_string(), "google/gemini-2.5-flash");
    }

    #[test]
    fn parses_each_provider() {
        for p in ProviderKind::ALL {
            let m: ModelRef = format!("{p}/some-model").parse().unwrap();
            assert_eq!(m.provider, p);
            assert_eq!(m.model, "some-model");
        }
    }

    #[test]
    fn rejects_unknown_and_malformed_with_accepted_forms() {
        for bad in ["gpt-4o", "azure/gpt-4o", "openai/", "/x"] {
            let err = bad.parse::<ModelRef>().unwrap_err().to_string();
            assert!(err.contains("openai/<model>"), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
