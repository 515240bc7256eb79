//! `submit`: the step behind the submit function. An upload under `inbox/` becomes a
//! job (see [`super::submission`]); anything else is ignored with a reason.

use super::context::{Context, PipelineError};
use super::job::keys;
use super::submission::submit_object;
use crate::storage::StoreError;

pub use super::submission::SubmitOutcome;

/// An uploaded object as the S3 event names it. The event's version pins the job to
/// that upload: a second upload of the same key is another job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedObject {
    /// The object's key, URL-decoded.
    pub key: String,
    /// The version the event names, in a versioned bucket.
    pub version_id: Option<String>,
}

/// Submits the uploaded object: ignored outside `inbox/` or when it is gone, else
/// its job is started or resumed.
pub async fn submit(
    ctx: &Context,
    object: &UploadedObject,
) -> Result<SubmitOutcome, PipelineError> {
    let key = object.key.as_str();
    if !key.starts_with(keys::INBOX) {
        return Ok(SubmitOutcome::Ignored {
            key: key.to_string(),
            reason: format!("only objects under {} are jobs", keys::INBOX),
        });
    }
    match ctx.store.head(key, object.version_id.as_deref()).await {
        Ok(meta) => submit_object(ctx, key, &meta).await,
        Err(StoreError::NotFound { .. }) => Ok(SubmitOutcome::Ignored {
            key: key.to_string(),
            reason: "the object no longer exists".into(),
        }),
        Err(e) => Err(e.into()),
    }
}
