//! Schema translation per provider.
