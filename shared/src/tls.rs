//! One TLS stack for every connection the functions make: rustls with ring, shared by
//! the providers' reqwest clients, the AWS SDK (`crate::aws`, feature `aws`) and
//! gcp_auth. Linking a second crypto library (aws-lc, the SDK's default) would add about
//! 3 MB to each Lambda binary.

use std::sync::Once;

/// Makes ring the process-wide rustls provider (reqwest is built without one of its own).
pub fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // An Err only means another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A reqwest builder that can make TLS connections; use it instead of `reqwest::Client::builder`.
pub fn reqwest_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}
