//! anthropic request-line encoding.
