//! openai result-line decoding.
