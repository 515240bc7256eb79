//! anthropic endpoints.

use std::sync::Arc;

use axum::Router;

use crate::common::Shared;

pub fn router(_shared: Arc<Shared>) -> Router {
    Router::new()
}
