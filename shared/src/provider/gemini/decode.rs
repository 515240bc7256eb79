//! gemini result-line decoding.
