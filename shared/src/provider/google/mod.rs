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

/// The `google.rpc.Code` names of a temporary, server-side failure. A Gemini results
/// line's error type is such a name (its `status`, else the name of its numeric `code`,
/// see [`wire::rpc_code_name`]), never a number, so HTTP codes are not listed; Vertex
/// failures are recognised by these names in their text.
const TEMPORARY_STATUSES: [&str; 4] = [
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "INTERNAL",
    "DEADLINE_EXCEEDED",
];

/// A prompt longer than the context window: "The input token count (1200000) exceeds
/// the maximum number of tokens allowed (1048576)."
const PROMPT_TOO_LONG: (&str, &str) = ("INVALID_ARGUMENT", "exceeds the maximum number of tokens");
