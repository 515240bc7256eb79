//! openai request-line encoding.
