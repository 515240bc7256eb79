//! Skipping rows that already have a success in an earlier job of the pipeline
//! (`skip_succeeded`). Rows wait here in groups of up to [`MAX_LOOKUP_IDS`] ids, so
//! that the ledger is asked once per group: the cost grows with the rows of the
//! upload, never with the pipeline's history.

use std::sync::Arc;

use serde::Serialize;

use crate::ledger::{LedgerError, MAX_LOOKUP_IDS, SuccessLedger};

/// A row not sent, and the job whose results hold its success: a line of
/// `results/<job>/skipped.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The row's id.
    pub custom_id: String,
    /// The earlier job of the pipeline that has its success.
    pub answer_job: String,
}

/// Rows waiting for their ledger lookup, in input order.
pub(super) struct SkipCheck<R> {
    ledger: Arc<dyn SuccessLedger>,
    pipeline: String,
    waiting: Vec<(String, R)>,
}

impl<R> SkipCheck<R> {
    /// Checks rows of `pipeline` against `ledger`.
    pub(super) fn new(ledger: Arc<dyn SuccessLedger>, pipeline: &str) -> Self {
        Self {
            ledger,
            pipeline: pipeline.to_string(),
            waiting: Vec::with_capacity(MAX_LOOKUP_IDS),
        }
    }

    /// Holds a row until its group is looked up; true when the group is full and
    /// [`SkipCheck::release`] is due.
    pub(super) fn hold(&mut self, custom_id: String, row: R) -> bool {
        self.waiting.push((custom_id, row));
        self.waiting.len() >= MAX_LOOKUP_IDS
    }

    /// Looks the held rows up: the rows to send, in input order, and those skipped.
    pub(super) async fn release(&mut self) -> Result<(Vec<R>, Vec<Skipped>), LedgerError> {
        if self.waiting.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let ids: Vec<String> = self.waiting.iter().map(|(id, _)| id.clone()).collect();
        let mut done = self.ledger.lookup(&self.pipeline, &ids).await?;
        let mut send = Vec::with_capacity(self.waiting.len());
        let mut skipped = Vec::new();
        for (custom_id, row) in self.waiting.drain(..) {
            match done.remove(&custom_id) {
                Some(answer_job) => skipped.push(Skipped {
                    custom_id,
                    answer_job,
                }),
                None => send.push(row),
            }
        }
        Ok((send, skipped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::MemoryLedger;

    #[tokio::test]
    async fn rows_with_a_success_in_the_pipeline_are_skipped_in_groups() {
        let ledger = Arc::new(MemoryLedger::new());
        ledger
            .record("invoices", "job-1", &["b".to_string()])
            .await
            .unwrap();
        ledger
            .record("other", "job-2", &["c".to_string()])
            .await
            .unwrap();
        let mut check = SkipCheck::new(ledger, "invoices");
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            assert!(!check.hold(id.to_string(), i));
        }
        let (send, skipped) = check.release().await.unwrap();
        // "c" succeeded in another pipeline only: it is sent.
        assert_eq!(send, vec![0, 2]);
        assert_eq!(
            skipped,
            vec![Skipped {
                custom_id: "b".into(),
                answer_job: "job-1".into()
            }]
        );
        let full = (0..MAX_LOOKUP_IDS).map(|i| check.hold(format!("r{i}"), i));
        assert_eq!(full.filter(|due| *due).count(), 1);
        assert_eq!(check.release().await.unwrap().0.len(), MAX_LOOKUP_IDS);
        assert_eq!(check.release().await.unwrap(), (Vec::new(), Vec::new()));
    }
}
