//! vertex request-line encoding.
