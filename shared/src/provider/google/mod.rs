//! Google's two batch APIs: Vertex AI ([`vertex`], model prefix `google/`, billed to a
//! Google Cloud project) and the Gemini Developer API ([`gemini`], model prefix
//! `gemini/`, an API key). What they share lives here: the `GenerateContentRequest` body
//! of their input lines, the `GenerateContentResponse` of their results, the JSON Schema
//! subset they take ([`schema`]) and wire details (int64 strings, rpc statuses, tags in
//! display names).

pub mod gemini;
mod request;
mod response;
pub mod schema;
pub mod vertex;
mod wire;

/// The `google.rpc` statuses and HTTP codes of a temporary, server-side failure, as
/// both Google APIs report them on a results line.
const TEMPORARY_STATUSES: [&str; 9] = [
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "INTERNAL",
    "DEADLINE_EXCEEDED",
    "429",
    "500",
    "502",
    "503",
    "504",
];
