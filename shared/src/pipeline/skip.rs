//! Skipping rows that already have a success in an earlier job of the pipeline
//! (`skip_succeeded`). Rows wait here in groups of up to [`MAX_LOOKUP_IDS`] ids, so
//! that the ledger is asked once per group: the cost grows with the rows of the
//! upload, never with the pipeline's history.
//!
//! A submit that resumes after a crash must build the same parts as the run that
//! died, but the ledger may have changed in between (another job finished). So each
//! part is written with the rows skipped while it filled (`parts/<n>.skipped`), and a
//! resumed run replays those decisions for the parts that already have a batch: their
//! rows are sent, their skipped rows skipped, and only later rows are looked up.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::ledger::{LedgerError, MAX_LOOKUP_IDS, SuccessLedger};

/// A row not sent, and the job whose results hold its success: a line of
/// `results/<job>/skipped.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The row's id.
    pub custom_id: String,
    /// The earlier job of the pipeline that has its success.
    pub answer_job: String,
}

/// The decisions of the run that died, for the parts that have a batch.
#[derive(Debug, Default)]
pub(super) struct Replay {
    /// Ids in those parts: sent again without a lookup.
    pub sent: HashSet<String>,
    /// Rows skipped while those parts filled, with the job holding their success.
    pub skipped: HashMap<String, String>,
}

/// Rows waiting for their ledger lookup, in input order.
pub(super) struct SkipCheck<R> {
    ledger: Arc<dyn SuccessLedger>,
    pipeline: String,
    replay: Replay,
    waiting: Vec<(String, R)>,
}

impl<R> SkipCheck<R> {
    /// Checks rows of `pipeline` against `ledger`, after the decisions of `replay`.
    pub(super) fn new(ledger: Arc<dyn SuccessLedger>, pipeline: &str, replay: Replay) -> Self {
        Self {
            ledger,
            pipeline: pipeline.to_string(),
            replay,
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
        let replay = &self.replay;
        let ids: Vec<String> = self
            .waiting
            .iter()
            .map(|(id, _)| id)
            .filter(|id| !replay.sent.contains(*id) && !replay.skipped.contains_key(*id))
            .cloned()
            .collect();
        let mut done = match ids.is_empty() {
            true => HashMap::new(),
            false => self.ledger.lookup(&self.pipeline, &ids).await?,
        };
        for (id, _) in &self.waiting {
            if let Some(job) = self.replay.skipped.get(id) {
                done.insert(id.clone(), job.clone());
            }
        }
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
        let mut check = SkipCheck::new(ledger.clone(), "invoices", Replay::default());
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

        // A resumed run: "a" was skipped and "b" sent by the run that died, whatever
        // the ledger says now; "d" is looked up.
        ledger
            .record("invoices", "job-3", &["d".to_string()])
            .await
            .unwrap();
        let replay = Replay {
            sent: HashSet::from(["b".to_string()]),
            skipped: HashMap::from([("a".to_string(), "job-0".to_string())]),
        };
        let mut check = SkipCheck::new(ledger, "invoices", replay);
        for (i, id) in ["a", "b", "d", "e"].into_iter().enumerate() {
            check.hold(id.to_string(), i);
        }
        let (send, skipped) = check.release().await.unwrap();
        assert_eq!(send, vec![1, 3]);
        let skipped: Vec<(&str, &str)> = skipped
            .iter()
            .map(|s| (s.custom_id.as_str(), s.answer_job.as_str()))
            .collect();
        assert_eq!(skipped, [("a", "job-0"), ("d", "job-3")]);
    }
}
