//! gemini request-line encoding.
