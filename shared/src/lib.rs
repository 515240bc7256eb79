//! batchline: structured-extraction jobs through the LLM providers' batch APIs.
//!
//! The library is usable on its own (build a batch, submit it, poll it, stream and
//! validate its results) and it is what the three Lambda functions call.

#![deny(missing_docs)]

#[cfg(feature = "aws")]
pub mod aws;
pub mod build;
pub mod clock;
pub mod error;
pub mod ledger;
pub mod metrics;
pub mod model;
pub mod packing;
pub mod pipeline;
pub mod provider;
pub mod queue;
pub mod quota;
pub mod request;
pub mod results;
pub mod schema;
pub mod status;
pub mod storage;
pub mod table;
#[cfg(test)]
mod table_tests;
pub mod tls;

pub use error::{Error, Result};
pub use model::{ModelRef, ProviderKind};
pub use request::{AnswerFormat, GenerationParams, Message, OutputSchema, Request, Role};
