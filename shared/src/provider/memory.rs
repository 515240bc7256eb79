//! A batch provider in memory, with scripted fates, for running the pipeline steps in
//! process (as `object_store` has a memory backend). It stands in for `openai/…`
//! models: it takes the OpenAI JSONL the part builder writes and streams OpenAI output
//! lines, so the real OpenAI decoder reads its results.
//!
//! A created batch stays `in_progress` until [`MemoryProvider::finish_all`] ends it
//! with the fate scripted for it ([`MemoryProvider::script`], else [`Fate::Complete`]),
//! or a cancel ends it as `cancelled`.

use std::collections::VecDeque;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Value, json};

use super::contract::{BatchProvider, BatchTags, LineStream};
use crate::error::{Error, Result};
use crate::model::ProviderKind;
use crate::status::{BatchState, BatchStatus, RequestCounts};

/// How a batch ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Every request succeeds with the provider's answer.
    Complete,
    /// The batch completes; these requests get a rate-limit error line (retryable).
    RateLimited(Vec<String>),
    /// The first `ran` requests ran, then the batch expired.
    Expire {
        /// Requests that ran before the batch expired.
        ran: usize,
    },
    /// The first `ran` requests ran, then a person cancelled the batch. A batch of
    /// another fate that is cancelled while it runs ends as this fate with none run.
    Cancel {
        /// Requests that ran before the cancellation.
        ran: usize,
    },
    /// The batch failed validation: no request ran, there are no results.
    FailValidation,
    /// The batch was accepted, then failed for the account's enqueued-token quota
    /// (OpenAI's `token_limit_exceeded`): no request ran, there are no results.
    QuotaExceeded,
    /// The batch completes, but its results can never be downloaded.
    LoseResults,
    /// The batch completes and says so for every request, but its results file holds
    /// only the first `sent` lines.
    DropLines {
        /// Lines the results file holds.
        sent: usize,
    },
    /// The batch completes, but the results line of this custom_id is cut off after
    /// its first half (which still names the id).
    CutLine(String),
    /// The batch completes; each listed request (by custom_id) answers the given text
    /// instead of the provider's answer.
    Answers(Vec<(String, String)>),
    /// The batch completes; a packed request of more than `rows` rows is cut off by
    /// the token limit (finish reason `length`), as a long answer would be.
    TruncateAbove {
        /// The most rows whose answers fit the token limit.
        rows: usize,
    },
}

/// The in-memory provider; see the module documentation.
#[derive(Debug)]
pub struct MemoryProvider {
    answer: Value,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    batches: Vec<MemoryBatch>,
    scripted: VecDeque<Fate>,
    /// Status calls answered with this HTTP status while set.
    refuse_status: Option<u16>,
    /// Creates still to be answered with HTTP 500.
    failing_creates: u32,
    /// Creates that succeed before the failing ones begin.
    creates_before_failing: u32,
    /// Creates are refused for quota while this many batches are running.
    open_batch_limit: Option<usize>,
    /// The most batches that were running at once.
    peak_open: usize,
    /// Cancel calls made, whatever they found.
    cancels: usize,
    /// Cancel calls still to be answered with HTTP 500.
    failing_cancels: u32,
}

#[derive(Debug)]
struct MemoryBatch {
    status: BatchStatus,
    custom_ids: Vec<String>,
    /// Rows of each request: the `### <n>` headings of a packed request, else 0.
    rows: Vec<usize>,
    fate: Fate,
}

impl MemoryProvider {
    /// A provider whose every successful request answers `answer`.
    pub fn new(answer: Value) -> Self {
        Self {
            answer,
            state: Mutex::new(State::default()),
        }
    }

    /// Sets the fate of the next batch created (fates are used in the order given).
    pub fn script(&self, fate: Fate) {
        self.lock().scripted.push_back(fate);
    }

    /// Ends every running batch with its fate.
    pub fn finish_all(&self) {
        self.finish_all_at(None);
    }

    /// Ends every running batch with its fate, reporting `ended_at` (RFC 3339) as its
    /// end time, as most providers do.
    pub fn finish_all_at(&self, ended_at: Option<&str>) {
        for batch in &mut self.lock().batches {
            if batch.status.state == BatchState::Processing {
                batch.end();
                batch.status.ended_at = ended_at.map(str::to_string);
            }
        }
    }

    /// Answers every status call with HTTP `status` (`None`: answer normally again).
    pub fn refuse_status(&self, status: Option<u16>) {
        self.lock().refuse_status = status;
    }

    /// Answers the next `n` creates with HTTP 500.
    pub fn fail_creates(&self, n: u32) {
        self.fail_creates_after(0, n);
    }

    /// Lets `ok` creates succeed, then answers the `n` after them with HTTP 500: a
    /// submit that dies between its parts.
    pub fn fail_creates_after(&self, ok: u32, n: u32) {
        let mut state = self.lock();
        state.creates_before_failing = ok;
        state.failing_creates = n;
    }

    /// Refuses creates (as a 429 to the last attempt does) while `limit` batches are
    /// running, as Anthropic's processing queue and Vertex AI's concurrent-jobs quota do.
    pub fn limit_open_batches(&self, limit: Option<usize>) {
        self.lock().open_batch_limit = limit;
    }

    /// The most batches that were running at the same time.
    pub fn peak_open_batches(&self) -> usize {
        self.lock().peak_open
    }

    /// Answers the next `n` cancel calls with HTTP 500.
    pub fn fail_cancels(&self, n: u32) {
        self.lock().failing_cancels = n;
    }

    /// How many cancel calls were made.
    pub fn cancels(&self) -> usize {
        self.lock().cancels
    }

    /// How many batches were created.
    pub fn created(&self) -> usize {
        self.lock().batches.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refused(status: u16, message: &str) -> Error {
        Error::Api {
            provider: ProviderKind::OpenAi,
            status,
            message: message.to_string(),
        }
    }

    fn find<T>(&self, batch_id: &str, f: impl FnOnce(&mut MemoryBatch) -> T) -> Result<T> {
        let mut state = self.lock();
        let batch = state
            .batches
            .iter_mut()
            .find(|b| b.status.batch_id == batch_id)
            .ok_or_else(|| Self::refused(404, &format!("no batch {batch_id}")))?;
        Ok(f(batch))
    }

    /// One OpenAI output line for `custom_id` (a request of `rows` packed rows, or 0):
    /// the answer (one per row when packed), what `fate` makes it, or a rate-limit error.
    fn result_line(&self, custom_id: &str, rows: usize, fate: &Fate, rate_limited: bool) -> String {
        let answer = match fate {
            Fate::Answers(answers)
                if let Some((_, text)) = answers.iter().find(|(id, _)| id == custom_id) =>
            {
                text.clone()
            }
            _ if rows == 0 => self.answer.to_string(),
            _ => Value::Object(
                (1..=rows)
                    .map(|k| (k.to_string(), self.answer.clone()))
                    .collect(),
            )
            .to_string(),
        };
        let cut_off = matches!(fate, Fate::TruncateAbove { rows: most } if rows > *most);
        let (finish_reason, content) = match cut_off {
            true => ("length", answer[..answer.len() / 2].to_string()),
            false => ("stop", answer),
        };
        let response = if rate_limited {
            json!({"status_code": 429, "request_id": "req", "body": {"error": {
                "message": "Rate limit reached", "type": "requests",
                "param": null, "code": "rate_limit_exceeded"}}})
        } else {
            json!({"status_code": 200, "request_id": "req", "body": {
                "object": "chat.completion",
                "choices": [{"index": 0, "finish_reason": finish_reason,
                             "message": {"role": "assistant", "content": content, "refusal": null}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}})
        };
        json!({"id": "batch_req", "custom_id": custom_id, "response": response, "error": null})
            .to_string()
    }
}

impl MemoryBatch {
    /// The lines the results file holds, with whether each is rate-limited.
    fn results(&self) -> Vec<(&str, bool)> {
        let ids = self.custom_ids.iter().map(String::as_str);
        match &self.fate {
            Fate::Complete | Fate::CutLine(_) | Fate::Answers(_) | Fate::TruncateAbove { .. } => {
                ids.map(|id| (id, false)).collect()
            }
            Fate::RateLimited(limited) => ids
                .map(|id| (id, limited.iter().any(|l| l == id)))
                .collect(),
            Fate::Expire { ran } | Fate::Cancel { ran } => {
                ids.take(*ran).map(|id| (id, false)).collect()
            }
            Fate::DropLines { sent } => ids.take(*sent).map(|id| (id, false)).collect(),
            Fate::FailValidation | Fate::QuotaExceeded | Fate::LoseResults => Vec::new(),
        }
    }

    fn end(&mut self) {
        let (state, raw) = match self.fate {
            Fate::Expire { .. } => (BatchState::Expired, "expired"),
            Fate::Cancel { .. } => (BatchState::Cancelled, "cancelled"),
            Fate::FailValidation | Fate::QuotaExceeded => (BatchState::Failed, "failed"),
            _ => (BatchState::Completed, "completed"),
        };
        let total = self.custom_ids.len() as u64;
        let limited = self
            .results()
            .iter()
            .filter(|(_, limited)| *limited)
            .count() as u64;
        let ran = match self.fate {
            Fate::DropLines { .. } => total,
            _ => self.results().len() as u64,
        };
        self.status.state = state;
        self.status.raw_status = raw.to_string();
        self.status.counts = RequestCounts {
            total,
            succeeded: ran - limited,
            failed: limited,
            pending: 0,
        };
        match self.fate {
            Fate::FailValidation => {
                self.status.error = Some("invalid_request: the input file is not valid".into());
            }
            Fate::QuotaExceeded => {
                self.status.error =
                    Some("token_limit_exceeded: Enqueued token limit reached".into());
                self.status.quota_exceeded = true;
            }
            _ => {}
        }
    }
}

#[async_trait]
impl BatchProvider for MemoryProvider {
    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenAi
    }

    async fn create(&self, _model: &str, input: Bytes, tags: &BatchTags) -> Result<BatchStatus> {
        let mut state = self.lock();
        if state.creates_before_failing > 0 {
            state.creates_before_failing -= 1;
        } else if state.failing_creates > 0 {
            state.failing_creates -= 1;
            return Err(Self::refused(500, "The server had an error"));
        }
        let open = state
            .batches
            .iter()
            .filter(|b| b.status.state == BatchState::Processing)
            .count();
        if state.open_batch_limit.is_some_and(|limit| open >= limit) {
            return Err(Error::QuotaExceeded {
                provider: ProviderKind::OpenAi,
                attempts: 1,
                message: "HTTP 429: the batch queue is full".into(),
            });
        }
        state.peak_open = state.peak_open.max(open + 1);
        let requests = input
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| {
                let line: Value = serde_json::from_slice(line)?;
                let user_text = line["body"]["messages"]
                    .as_array()
                    .and_then(|messages| messages.last())
                    .and_then(|message| message["content"].as_str())
                    .unwrap_or_default();
                let headings = user_text
                    .lines()
                    .filter(|l| {
                        l.strip_prefix("### ")
                            .is_some_and(|n| n.parse::<usize>().is_ok())
                    })
                    .count();
                Ok((
                    line["custom_id"].as_str().unwrap_or_default().to_string(),
                    headings,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let (custom_ids, rows): (Vec<String>, Vec<usize>) = requests.into_iter().unzip();
        let status = BatchStatus {
            batch_id: format!("batch_{}", state.batches.len()),
            state: BatchState::Processing,
            raw_status: "in_progress".into(),
            counts: RequestCounts {
                total: custom_ids.len() as u64,
                pending: custom_ids.len() as u64,
                ..RequestCounts::default()
            },
            created_at: None,
            ended_at: None,
            error: None,
            quota_exceeded: false,
            tags: tags.clone(),
        };
        let fate = state.scripted.pop_front().unwrap_or(Fate::Complete);
        state.batches.push(MemoryBatch {
            status: status.clone(),
            custom_ids,
            rows,
            fate,
        });
        Ok(status)
    }

    async fn status(&self, batch_id: &str) -> Result<BatchStatus> {
        if let Some(status) = self.lock().refuse_status {
            return Err(Self::refused(status, "Incorrect API key provided"));
        }
        self.find(batch_id, |batch| batch.status.clone())
    }

    async fn cancel(&self, batch_id: &str) -> Result<BatchStatus> {
        {
            let mut state = self.lock();
            state.cancels += 1;
            if state.failing_cancels > 0 {
                state.failing_cancels -= 1;
                return Err(Self::refused(500, "The server had an error"));
            }
        }
        self.find(batch_id, |batch| {
            if batch.status.state == BatchState::Processing {
                // A scripted cancellation says how many requests ran before it.
                if !matches!(batch.fate, Fate::Cancel { .. }) {
                    batch.fate = Fate::Cancel { ran: 0 };
                }
                batch.end();
            }
            batch.status.clone()
        })
    }

    async fn list(&self) -> Result<Vec<BatchStatus>> {
        Ok(self
            .lock()
            .batches
            .iter()
            .map(|b| b.status.clone())
            .collect())
    }

    async fn results(&self, batch_id: &str) -> Result<LineStream> {
        let lines = self.find(batch_id, |batch| match batch.fate {
            Fate::LoseResults | Fate::FailValidation | Fate::QuotaExceeded => None,
            _ => Some(
                batch
                    .results()
                    .into_iter()
                    .map(|(id, limited)| {
                        let rows = batch
                            .custom_ids
                            .iter()
                            .position(|c| c == id)
                            .map_or(0, |i| batch.rows[i]);
                        let mut line = self.result_line(id, rows, &batch.fate, limited);
                        if batch.fate == Fate::CutLine(id.to_string()) {
                            line.truncate(line.len() / 2);
                        }
                        Ok(Bytes::from(line))
                    })
                    .collect::<Vec<_>>(),
            ),
        })?;
        let lines = lines.ok_or_else(|| Self::refused(404, "the batch has no output file"))?;
        Ok(Box::pin(futures::stream::iter(lines)))
    }
}
