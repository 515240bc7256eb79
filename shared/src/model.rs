//! `provider/model` strings.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The four batch APIs batchline speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Batch API.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic Message Batches.
    Anthropic,
    /// Google Vertex AI batch prediction (through Cloud Storage).
    Google,
    /// Gemini Developer API batch mode (API key).
    Gemini,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 4] = [Self::OpenAi, Self::Anthropic, Self::Google, Self::Gemini];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Anthropic => "anthropic",
            Self::Google => "google",
            Self::Gemini => "gemini",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProviderKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| Error::InvalidModel {
                model: s.to_string(),
                reason: format!("unknown provider {s:?}"),
            })
    }
}

/// A parsed `provider/model` string, e.g. `openai/gpt-4o-mini`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    pub provider: ProviderKind,
    pub model: String,
}

impl FromStr for ModelRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidModel {
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
