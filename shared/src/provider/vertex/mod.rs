//! vertex client.

pub mod decode;
pub mod encode;
