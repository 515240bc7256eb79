//! vertex
