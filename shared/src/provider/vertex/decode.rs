//! vertex result-line decoding.
