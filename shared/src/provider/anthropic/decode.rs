//! anthropic result-line decoding.
