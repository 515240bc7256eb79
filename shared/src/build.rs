//! Building batch input in memory: requests in, provider-ready parts out.
//!
//! [`BatchBuilder`] encodes one request at a time straight into the body of the
//! current part and starts a new part when the provider's request-count or byte
//! limit would be crossed. A request it refuses (duplicate id, invalid id, empty
//! conversation, too large on its own) leaves it unchanged, so a caller can record
//! an error for that one line and go on.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;

use crate::error::{Error, Result};
use crate::model::{ModelRef, ProviderKind};
use crate::packing::{
    check_packable, packable_schema, packed_params, packed_request, packed_request_id,
    packed_schema,
};
use crate::provider::descriptor;
use crate::provider::encode::{Framing, PartLimits, RequestEncoder};
use crate::request::{AnswerFormat, GenerationParams, Message, OutputSchema, Request, Role};
use bytes::Bytes;

/// Why a part was closed before the input ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitReason {
    /// The part holds the most requests the provider accepts in one batch.
    RequestCount {
        /// The provider's most requests per batch.
        limit: usize,
    },
    /// One more request would have made the part larger than the provider accepts.
    ByteSize {
        /// The provider's largest batch, in bytes.
        limit: usize,
    },
}

impl fmt::Display for SplitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::RequestCount { limit } => write!(f, "{} requests", thousands(limit)),
            Self::ByteSize { limit } if limit.is_multiple_of(1_000_000) => {
                write!(f, "{} MB", thousands(limit / 1_000_000))
            }
            Self::ByteSize { limit } => write!(f, "{} bytes", thousands(limit)),
        }
    }
}

/// One provider batch, framed and ready to upload.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPart {
    /// 0-based position of the part within the job.
    pub index: u32,
    /// The framed batch input, as the provider takes it.
    pub body: Bytes,
    /// The ids of the part's rows, in row order.
    pub custom_ids: Vec<String>,
    /// How many rows each provider request of the part holds, in order: all 1 unless
    /// rows are packed ([`crate::packing`]).
    pub request_rows: Vec<u32>,
    /// Why the part was closed early; `None` for the last part.
    pub split: Option<SplitReason>,
}

impl BatchPart {
    /// The row ids of each provider request, in order.
    pub fn requests(&self) -> impl Iterator<Item = &[String]> {
        let mut rest = self.custom_ids.as_slice();
        self.request_rows.iter().map(move |&n| {
            let (request, tail) = rest.split_at(n as usize);
            rest = tail;
            request
        })
    }

    /// The part's manifest: one line per provider request, its rows' ids separated
    /// by tabs (ids never hold control characters).
    pub fn manifest(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.custom_ids.iter().map(|id| id.len() + 1).sum());
        for request in self.requests() {
            out.extend_from_slice(request.join("\t").as_bytes());
            out.push(b'\n');
        }
        out
    }
}

/// Reads a manifest ([`BatchPart::manifest`]) back: the row ids of each request.
pub fn parse_manifest(manifest: &str) -> Vec<Vec<String>> {
    manifest
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| line.split('\t').map(str::to_string).collect())
        .collect()
}

/// The encoder of `model`'s provider asking for answers in `format`, with its schema
/// (if any) translated once for the batch.
pub fn encoder_for(
    model: &ModelRef,
    format: &AnswerFormat,
    params: &GenerationParams,
) -> Result<Box<dyn RequestEncoder>> {
    descriptor(model.provider).encoder(&model.model, format, params)
}

/// Packed requests' encoders, one per number of rows (the schema names each row),
/// made when first needed.
#[derive(Debug)]
struct Packer {
    model: ModelRef,
    schema: OutputSchema,
    params: GenerationParams,
    rows_per_request: usize,
    encoders: HashMap<usize, Box<dyn RequestEncoder>>,
    /// Rows waiting for their request, and the bytes of their texts.
    pending: Vec<Request>,
    pending_bytes: usize,
}

impl Packer {
    fn encoder(&mut self, rows: usize) -> Result<&dyn RequestEncoder> {
        if !self.encoders.contains_key(&rows) {
            let schema = packed_schema(&self.schema, rows, self.model.provider)?;
            let encoder = encoder_for(
                &self.model,
                &AnswerFormat::Schema(schema),
                &packed_params(&self.params),
            )?;
            self.encoders.insert(rows, encoder);
        }
        Ok(self.encoders[&rows].as_ref())
    }
}

/// Accumulates encoded requests into parts that fit the provider's limits, packing
/// `rows_per_request` rows into each request when asked to.
#[derive(Debug)]
pub struct BatchBuilder {
    encoder: Box<dyn RequestEncoder>,
    packer: Option<Packer>,
    limits: PartLimits,
    framing: Framing,
    /// Every id accepted so far in the job, across parts; `None` when the caller
    /// checks ids itself ([`BatchBuilder::trusting_ids`]).
    seen_ids: Option<HashSet<String>>,
    /// The open part: framing prefix and the requests so far (no suffix yet).
    body: Vec<u8>,
    custom_ids: Vec<String>,
    request_rows: Vec<u32>,
    part_index: u32,
    /// Reused for each request so that a refused request never touches `body`.
    scratch: Vec<u8>,
    /// Rows refused after they were accepted (see [`BatchBuilder::take_rejected`]).
    rejected: Vec<(String, String)>,
    /// Rows accepted but not yet encoded, for a provider with a minimum batch size
    /// ([`crate::provider::ProviderDescriptor::min_requests`]); see [`Reserve`].
    reserve: Reserve,
}

/// The last rows pushed, held back from the open part so that the builder still
/// knows, when the input ends, whether they fill a last part of the provider's
/// minimum size: if the open part cannot take them all, it is closed first and they
/// make the last part on their own. A part closed by a full part along the way is
/// followed by at least these rows, so no part but a lone first one is ever smaller.
#[derive(Debug, Default)]
struct Reserve {
    /// Rows held: the minimum's worth of requests (0 without a minimum).
    capacity: usize,
    /// The rows with their encoded size (unpacked; 0 when packed).
    rows: VecDeque<(Request, usize)>,
}

impl BatchBuilder {
    /// A builder for `model`'s provider asking for answers to `schema`, within its
    /// limits, one row per request.
    pub fn new(model: &ModelRef, schema: &OutputSchema, params: &GenerationParams) -> Result<Self> {
        Self::packed(model, &AnswerFormat::Schema(schema.clone()), params, 1)
    }

    /// A builder asking for answers in `format` that packs up to `rows_per_request`
    /// rows into each request ([`crate::packing`], which needs a schema); with 1 row
    /// per request any format goes.
    pub fn packed(
        model: &ModelRef,
        format: &AnswerFormat,
        params: &GenerationParams,
        rows_per_request: usize,
    ) -> Result<Self> {
        let provider = descriptor(model.provider);
        let mut builder =
            Self::with_encoder(encoder_for(model, format, params)?, provider.limits());
        if rows_per_request > 1 {
            let schema = packable_schema(format)?;
            let mut packer = Packer {
                model: model.clone(),
                schema: schema.clone(),
                params: params.clone(),
                rows_per_request,
                encoders: HashMap::new(),
                pending: Vec::new(),
                pending_bytes: 0,
            };
            // A schema that cannot be packed fails the job now, not at the first request.
            packer.encoder(rows_per_request)?;
            builder.packer = Some(packer);
        }
        Ok(builder.with_min_requests(provider.min_requests()))
    }

    /// Never leaves a part under `min_requests` requests, but a lone first one (see
    /// [`Reserve`]); the provider's own minimum unless the account's quota differs.
    /// Call before the first push.
    pub fn with_min_requests(mut self, min_requests: usize) -> Self {
        // The whole minimum in reserve lets the last rows make a part of their own.
        self.reserve.capacity = match min_requests {
            0 | 1 => 0,
            n => n * self.rows_per_request(),
        };
        self
    }

    /// A builder over `encoder` whose parts stay within `limits`.
    pub fn with_encoder(encoder: Box<dyn RequestEncoder>, limits: PartLimits) -> Self {
        let framing = encoder.framing();
        Self {
            encoder,
            packer: None,
            limits,
            framing,
            seen_ids: Some(HashSet::new()),
            body: framing.prefix.to_vec(),
            custom_ids: Vec::new(),
            request_rows: Vec::new(),
            part_index: 0,
            scratch: Vec::new(),
            rejected: Vec::new(),
            reserve: Reserve::default(),
        }
    }

    /// Replaces the provider's limits (tests force small parts with this).
    pub fn with_limits(mut self, limits: PartLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits parts are closed at.
    pub fn limits(&self) -> PartLimits {
        self.limits
    }

    /// Rows that were accepted by [`BatchBuilder::push`] but whose packed request
    /// could not be encoded even alone, with the reason: the caller records them as
    /// errors. Empty in practice (a packed request is capped far below a batch's size).
    pub fn take_rejected(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.rejected)
    }

    /// Adds the row `request`. Unpacked, it is encoded into the open part at once;
    /// packed, it waits for the rows of its request. Returns the previous part,
    /// closed, when a request did not fit in it and opened a new one. On error
    /// nothing changes and the error concerns `request` only.
    pub fn push(&mut self, request: &Request) -> Result<Option<BatchPart>> {
        self.check_new_id(request)?;
        if self.reserve.capacity == 0 {
            let closed = self.accept(request)?;
            self.remember(&request.custom_id);
            return Ok(closed);
        }
        // Refused now, not when it leaves the reserve, so the error is this row's.
        let encoded = self.check_alone(request)?;
        self.remember(&request.custom_id);
        self.reserve.rows.push_back((request.clone(), encoded));
        if self.reserve.rows.len() <= self.reserve.capacity {
            return Ok(None);
        }
        let (oldest, _) = self.reserve.rows.pop_front().expect("a full reserve");
        Ok(self.accept_checked(&oldest))
    }

    /// Adds a row whose id is checked: encoded into the open part unpacked, waiting
    /// for the rows of its request packed.
    fn accept(&mut self, request: &Request) -> Result<Option<BatchPart>> {
        let Some(packer) = &mut self.packer else {
            return self.add_request(None, request, &[]);
        };
        check_packable(request).map_err(|reason| Error::InvalidRequest {
            custom_id: request.custom_id.clone(),
            reason,
        })?;
        let text_bytes = request.messages[0].content.len();
        // A packed request stays far below a batch's byte limit, so it always fits alone.
        let full = packer.pending.len() >= packer.rows_per_request
            || packer.pending_bytes + text_bytes > self.limits.max_bytes / 4;
        let closed = match full {
            true => self.flush_pending(),
            false => None,
        };
        let packer = self.packer.as_mut().expect("packing builder");
        packer.pending_bytes += text_bytes;
        packer.pending.push(request.clone());
        Ok(closed)
    }

    /// [`Self::accept`] for a row [`Self::check_alone`] passed, which cannot fail; should
    /// it, the row is reported through [`Self::take_rejected`].
    fn accept_checked(&mut self, request: &Request) -> Option<BatchPart> {
        self.accept(request).unwrap_or_else(|e| {
            self.rejected
                .push((request.custom_id.clone(), e.to_string()));
            None
        })
    }

    /// Whether `request` can go into a part: encodable and, unpacked, no larger than
    /// a part on its own. Answers its encoded size (0 packed, where rows share requests).
    fn check_alone(&mut self, request: &Request) -> Result<usize> {
        if self.packer.is_some() {
            check_packable(request).map_err(|reason| Error::InvalidRequest {
                custom_id: request.custom_id.clone(),
                reason,
            })?;
            return Ok(0);
        }
        self.encode_into_scratch(None, 0, request)?;
        self.check_fits_alone(request)?;
        Ok(self.scratch.len())
    }

    /// Refuses `request` when its encoding (in `scratch`) is larger than a part.
    fn check_fits_alone(&self, request: &Request) -> Result<()> {
        let alone = self.framing.prefix.len() + self.scratch.len() + self.framing.suffix.len();
        if alone <= self.limits.max_bytes {
            return Ok(());
        }
        Err(Error::InvalidRequest {
            custom_id: request.custom_id.clone(),
            reason: format!(
                "encoded request is {} bytes; a batch may hold at most {} bytes",
                thousands(alone),
                thousands(self.limits.max_bytes)
            ),
        })
    }

    /// Encodes the reserve's rows, closing the open part first when they do not all
    /// fit in it, so that they make a last part of at least the provider's minimum.
    fn release_reserve(&mut self) -> Vec<BatchPart> {
        let rows = std::mem::take(&mut self.reserve.rows);
        let mut closed = Vec::new();
        if !rows.is_empty() {
            let requests = self.request_rows.len() + rows.len().div_ceil(self.rows_per_request());
            let bytes = self.body.len()
                + rows
                    .iter()
                    .map(|(_, size)| size + self.framing.separator.len())
                    .sum::<usize>()
                + self.framing.suffix.len();
            let split = if requests > self.limits.max_requests {
                Some(SplitReason::RequestCount {
                    limit: self.limits.max_requests,
                })
            } else if bytes > self.limits.max_bytes {
                Some(SplitReason::ByteSize {
                    limit: self.limits.max_bytes,
                })
            } else {
                None
            };
            if let Some(split) = split {
                closed.extend(self.flush_pending());
                closed.extend(self.close_part(Some(split)));
            }
        }
        for (row, _) in rows {
            closed.extend(self.accept_checked(&row));
        }
        closed
    }

    fn rows_per_request(&self) -> usize {
        self.packer.as_ref().map_or(1, |p| p.rows_per_request)
    }

    /// Adds `rows` as one packed request of their own (a retry splits a request that
    /// was too long this way), after the rows waiting for a request. Unpacked, each
    /// row is pushed as usual. Returns the parts closed on the way.
    pub fn push_together(&mut self, rows: &[Request]) -> Result<Vec<BatchPart>> {
        if self.packer.is_none() {
            let mut closed = Vec::new();
            for row in rows {
                closed.extend(self.push(row)?);
            }
            return Ok(closed);
        }
        for row in rows {
            self.check_new_id(row)?;
        }
        let mut closed = self.release_reserve();
        closed.extend(self.flush_pending());
        let packer = self.packer.as_mut().expect("packing builder");
        packer.pending = rows.to_vec();
        closed.extend(self.flush_pending());
        for row in rows {
            self.remember(&row.custom_id);
        }
        Ok(closed)
    }

    /// Numbers the parts from `index` on: a submit that goes on from a checkpoint
    /// continues the numbering of the parts before it.
    pub fn starting_at(mut self, index: u32) -> Self {
        self.part_index = index;
        self
    }

    /// The index the next part will get.
    pub fn next_part(&self) -> u32 {
        self.part_index
    }

    /// Closes the last parts (packed rows still waiting may close one more); empty
    /// when no request was added since the last split.
    pub fn finish(&mut self) -> Vec<BatchPart> {
        let mut parts = self.release_reserve();
        parts.extend(self.flush_pending());
        parts.extend(self.close_part(None));
        parts
    }

    /// Leaves the check of repeated ids to the caller, which has checked every id
    /// before it pushes the row (submit does, over all of an upload's rows): the
    /// builder then holds no id beyond its open part.
    pub fn trusting_ids(mut self) -> Self {
        self.seen_ids = None;
        self
    }

    fn remember(&mut self, id: &str) {
        if let Some(seen) = &mut self.seen_ids {
            seen.insert(id.to_string());
        }
    }

    /// Refuses a row whose id an earlier row of the job has.
    fn check_new_id(&self, row: &Request) -> Result<()> {
        if !self
            .seen_ids
            .as_ref()
            .is_some_and(|seen| seen.contains(&row.custom_id))
        {
            return Ok(());
        }
        Err(Error::InvalidRequest {
            custom_id: row.custom_id.clone(),
            reason: "duplicate custom_id: ids must be unique within a job".to_string(),
        })
    }

    /// Encodes the rows waiting for their request as one packed request. Should that
    /// fail, the rows go into requests of their own and a row that fails alone is
    /// recorded in `rejected`.
    fn flush_pending(&mut self) -> Option<BatchPart> {
        let packer = self.packer.as_mut()?;
        let rows = std::mem::take(&mut packer.pending);
        packer.pending_bytes = 0;
        if rows.is_empty() {
            return None;
        }
        let refs: Vec<&Request> = rows.iter().collect();
        let ids: Vec<String> = rows.iter().map(|row| row.custom_id.clone()).collect();
        let packed = packed_request(packed_request_id(self.request_rows.len()), &refs);
        match self.add_request(Some(rows.len()), &packed, &ids) {
            Ok(closed) => closed,
            Err(_) if rows.len() > 1 => {
                let mut closed = None;
                for row in rows {
                    let packer = self.packer.as_mut().expect("packing builder");
                    packer.pending = vec![row];
                    closed = closed.or(self.flush_pending());
                }
                closed
            }
            Err(e) => {
                self.rejected.push((ids[0].clone(), e.to_string()));
                None
            }
        }
    }

    /// Encodes `request` (holding the rows `ids`, or itself when unpacked: `rows` is
    /// `None`) into the open part, closing it first when the request does not fit.
    fn add_request(
        &mut self,
        rows: Option<usize>,
        request: &Request,
        ids: &[String],
    ) -> Result<Option<BatchPart>> {
        let requests = self.request_rows.len();
        let count_full = requests >= self.limits.max_requests;
        // The row number is part of some encodings (Vertex labels) and of packed ids.
        let row = if count_full { 0 } else { requests };
        let mut request = Cow::Borrowed(request);
        if rows.is_some() && count_full {
            request.to_mut().custom_id = packed_request_id(0);
        }
        self.encode_into_scratch(rows, row, &request)?;

        let fits_open_part = !count_full
            && self.body.len()
                + self.separator_len(requests)
                + self.scratch.len()
                + self.framing.suffix.len()
                <= self.limits.max_bytes;
        let closed = if fits_open_part {
            None
        } else {
            if row != 0 {
                if rows.is_some() {
                    request.to_mut().custom_id = packed_request_id(0);
                }
                self.encode_into_scratch(rows, 0, &request)?;
            }
            self.check_fits_alone(&request)?;
            let reason = if count_full {
                SplitReason::RequestCount {
                    limit: self.limits.max_requests,
                }
            } else {
                SplitReason::ByteSize {
                    limit: self.limits.max_bytes,
                }
            };
            self.close_part(Some(reason))
        };

        if !self.request_rows.is_empty() {
            self.body.extend_from_slice(self.framing.separator);
        }
        self.body.extend_from_slice(&self.scratch);
        match rows {
            Some(n) => {
                self.custom_ids.extend_from_slice(ids);
                self.request_rows.push(n as u32);
            }
            None => {
                self.custom_ids.push(request.custom_id.clone());
                self.request_rows.push(1);
            }
        }
        Ok(closed)
    }

    /// Encodes `request` with the encoder for `rows` packed rows (or the unpacked one).
    fn encode_into_scratch(
        &mut self,
        rows: Option<usize>,
        row: usize,
        request: &Request,
    ) -> Result<()> {
        self.scratch.clear();
        let encoder = match (rows, &mut self.packer) {
            (Some(n), Some(packer)) => packer.encoder(n)?,
            _ => self.encoder.as_ref(),
        };
        encoder.encode(row, request, &mut self.scratch)
    }

    fn separator_len(&self, requests: usize) -> usize {
        if requests == 0 {
            0
        } else {
            self.framing.separator.len()
        }
    }

    /// Takes the open part (if it has requests) and opens an empty one.
    fn close_part(&mut self, split: Option<SplitReason>) -> Option<BatchPart> {
        if self.request_rows.is_empty() {
            return None;
        }
        let mut body = std::mem::replace(&mut self.body, self.framing.prefix.to_vec());
        body.extend_from_slice(self.framing.suffix);
        let part = BatchPart {
            index: self.part_index,
            body: Bytes::from(body),
            custom_ids: std::mem::take(&mut self.custom_ids),
            request_rows: std::mem::take(&mut self.request_rows),
            split,
        };
        self.part_index += 1;
        Some(part)
    }
}

/// Every part of a job, and a sentence that says why there are that many.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchPlan {
    /// The parts, in order.
    pub parts: Vec<BatchPart>,
    /// Why there are that many parts (see [`plan_summary`]).
    pub summary: String,
}

/// Builds all parts at once; the first refused request fails the whole plan.
pub fn build_batch<'a>(
    model: &ModelRef,
    schema: &OutputSchema,
    params: &GenerationParams,
    requests: impl IntoIterator<Item = &'a Request>,
) -> Result<BatchPlan> {
    let mut builder = BatchBuilder::new(model, schema, params)?;
    let mut parts = Vec::new();
    for request in requests {
        parts.extend(builder.push(request)?);
    }
    parts.extend(builder.finish());
    let summary = plan_summary(model.provider, &parts);
    Ok(BatchPlan { parts, summary })
}

/// "3 parts: OpenAI allows 50,000 requests per batch", or "1 part".
pub fn plan_summary(provider: ProviderKind, parts: &[BatchPart]) -> String {
    let count = match parts.len() {
        1 => "1 part".to_string(),
        n => format!("{n} parts"),
    };
    let mut reasons: Vec<String> = Vec::new();
    for reason in parts.iter().filter_map(|p| p.split) {
        let text = reason.to_string();
        if !reasons.contains(&text) {
            reasons.push(text);
        }
    }
    if reasons.is_empty() {
        return count;
    }
    format!(
        "{count}: {} allows {} per batch",
        descriptor(provider).display_name(),
        reasons.join(" and ")
    )
}

/// 50000 → "50,000".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// Request constructors live here, next to their only consumer, so that request.rs
// stays a plain data module.
impl Request {
    /// One request per text, each a single user message (the system prompt of the
    /// batch's [`GenerationParams`] is the instruction), with ids `request-0`, `request-1`, ….
    pub fn from_texts<I, S>(texts: I) -> Vec<Request>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        texts
            .into_iter()
            .enumerate()
            .map(|(i, text)| Request {
                custom_id: default_custom_id(i),
                messages: vec![Message::new(Role::User, text)],
            })
            .collect()
    }

    /// One request per conversation, with the caller's ids or `request-{i}`.
    /// Ids and conversations must be as many; uniqueness is checked when building.
    pub fn from_conversations(
        conversations: Vec<Vec<Message>>,
        custom_ids: Option<Vec<String>>,
    ) -> Result<Vec<Request>> {
        let ids = match custom_ids {
            Some(ids) if ids.len() != conversations.len() => {
                return Err(Error::InvalidRequest {
                    custom_id: String::new(),
                    reason: format!(
                        "{} custom ids for {} conversations; give one id per conversation",
                        ids.len(),
                        conversations.len()
                    ),
                });
            }
            Some(ids) => ids,
            None => (0..conversations.len()).map(default_custom_id).collect(),
        };
        Ok(ids
            .into_iter()
            .zip(conversations)
            .map(|(custom_id, messages)| Request {
                custom_id,
                messages,
            })
            .collect())
    }
}

fn default_custom_id(i: usize) -> String {
    format!("request-{i}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn model(s: &str) -> ModelRef {
        s.parse().expect("valid model string")
    }

    fn schema() -> OutputSchema {
        OutputSchema {
            name: "answer".to_string(),
            schema: json!({"type":"object","properties":{"x":{"type":"integer"}},"required":["x"]}),
        }
    }

    fn builder(provider_model: &str) -> BatchBuilder {
        BatchBuilder::new(
            &model(provider_model),
            &schema(),
            &GenerationParams::default(),
        )
        .expect("builder")
    }

    fn texts(n: usize) -> Vec<Request> {
        Request::from_texts((0..n).map(|i| format!("text number {i}")))
    }

    /// The custom ids a part's body holds, in order, parsing the body the way the
    /// provider would (JSONL, or one JSON document for Anthropic).
    fn ids_in_body(provider: ProviderKind, part: &BatchPart) -> Vec<String> {
        let id_of = |item: &Value| -> String {
            match provider {
                ProviderKind::OpenAi | ProviderKind::Anthropic => item["custom_id"].as_str(),
                ProviderKind::Gemini => item["key"].as_str(),
                ProviderKind::Bedrock => item["recordId"].as_str(),
                ProviderKind::Vertex => None,
            }
            .expect("id field")
            .to_string()
        };
        if provider == ProviderKind::Anthropic {
            let document: Value = serde_json::from_slice(&part.body).expect("one JSON document");
            return document["requests"]
                .as_array()
                .expect("requests")
                .iter()
                .map(id_of)
                .collect();
        }
        let text = std::str::from_utf8(&part.body).expect("UTF-8");
        assert!(text.ends_with('\n'), "JSONL ends with a newline");
        text.lines()
            .enumerate()
            .map(|(row, line)| {
                let item: Value = serde_json::from_str(line).expect("each line is JSON");
                if provider == ProviderKind::Vertex {
                    let label = &item["request"]["labels"]["batchline_row"];
                    assert_eq!(label, &json!(row.to_string()), "row label matches the row");
                    part.custom_ids[row].clone()
                } else {
                    id_of(&item)
                }
            })
            .collect()
    }

    fn push_all(builder: &mut BatchBuilder, requests: &[Request]) -> Vec<BatchPart> {
        let mut parts = Vec::new();
        for request in requests {
            parts.extend(builder.push(request).expect("accepted"));
        }
        parts
    }

    #[test]
    fn texts_get_default_ids_from_zero() {
        let requests = Request::from_texts(["a", "b"]);
        assert_eq!(
            requests,
            vec![
                Request {
                    custom_id: "request-0".into(),
                    messages: vec![Message::new(Role::User, "a")]
                },
                Request {
                    custom_id: "request-1".into(),
                    messages: vec![Message::new(Role::User, "b")]
                },
            ]
        );
    }

    #[test]
    fn conversations_take_caller_ids_or_defaults() {
        let conversation = || vec![Message::new(Role::User, "q")];
        let with_ids = Request::from_conversations(
            vec![conversation(), conversation()],
            Some(vec!["x".into(), "y".into()]),
        )
        .unwrap();
        assert_eq!(
            with_ids
                .iter()
                .map(|r| r.custom_id.as_str())
                .collect::<Vec<_>>(),
            ["x", "y"]
        );
        let defaults = Request::from_conversations(vec![conversation()], None).unwrap();
        assert_eq!(defaults[0].custom_id, "request-0");
        assert!(matches!(
            Request::from_conversations(vec![conversation()], Some(vec![])),
            Err(Error::InvalidRequest { .. })
        ));
    }

    #[test]
    fn a_duplicate_id_is_refused_and_the_builder_is_unchanged() {
        let mut builder = builder("openai/gpt-4o-mini");
        let requests = texts(2);
        push_all(&mut builder, &requests);
        let before = (builder.body.clone(), builder.custom_ids.clone());
        let err = builder.push(&requests[0]).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidRequest { custom_id, reason } if custom_id == "request-0" && reason.contains("duplicate")),
            "{err}"
        );
        assert_eq!((builder.body.clone(), builder.custom_ids.clone()), before);
        let part = builder.finish().pop().expect("one part");
        assert_eq!(part.custom_ids, ["request-0", "request-1"]);
        assert_eq!(ids_in_body(ProviderKind::OpenAi, &part), part.custom_ids);
    }

    #[test]
    fn duplicates_are_caught_across_parts() {
        let mut builder = builder("openai/gpt-4o-mini").with_limits(PartLimits {
            max_requests: 1,
            max_bytes: LARGE,
        });
        let requests = texts(3);
        assert_eq!(push_all(&mut builder, &requests).len(), 2);
        assert!(
            builder.push(&requests[0]).is_err(),
            "request-0 sits in a closed part"
        );
    }

    #[test]
    fn anthropic_refuses_an_invalid_id_by_name_and_goes_on() {
        let mut builder = builder("anthropic/claude-sonnet-4-5");
        let bad = Request {
            custom_id: "row 7/b".to_string(),
            messages: vec![Message::new(Role::User, "q")],
        };
        let err = builder.push(&bad).unwrap_err();
        assert!(err.to_string().contains("\"row 7/b\""), "{err}");
        let good = texts(1);
        push_all(&mut builder, &good);
        let part = builder.finish().pop().expect("one part");
        assert_eq!(ids_in_body(ProviderKind::Anthropic, &part), ["request-0"]);
    }

    #[test]
    fn a_refused_conversation_leaves_no_trace() {
        let mut builder = builder("google/gemini-2.5-flash");
        let empty = Request {
            custom_id: "empty".into(),
            messages: vec![],
        };
        assert!(matches!(
            builder.push(&empty),
            Err(Error::InvalidRequest { .. })
        ));
        let mut requests = texts(2);
        requests[1].custom_id = "empty".into(); // the id was not taken by the refused request
        push_all(&mut builder, &requests);
        let part = builder.finish().pop().expect("one part");
        assert_eq!(part.custom_ids, ["request-0", "empty"]);
        assert_eq!(ids_in_body(ProviderKind::Vertex, &part), part.custom_ids);
    }

    const LARGE: usize = 1 << 30;

    /// Every id exactly once across the parts, in order, each body parseable and
    /// holding exactly its part's ids, indexes consecutive.
    fn assert_parts_cover(provider: ProviderKind, parts: &[BatchPart], requests: &[Request]) {
        let all: Vec<&str> = parts
            .iter()
            .flat_map(|p| p.custom_ids.iter().map(String::as_str))
            .collect();
        let expected: Vec<&str> = requests.iter().map(|r| r.custom_id.as_str()).collect();
        assert_eq!(all, expected);
        for (i, part) in parts.iter().enumerate() {
            assert_eq!(part.index as usize, i);
            assert_eq!(ids_in_body(provider, part), part.custom_ids, "part {i}");
        }
    }

    #[test]
    fn splits_by_request_count_for_every_provider() {
        for (provider_model, provider) in [
            ("openai/gpt-4o-mini", ProviderKind::OpenAi),
            ("anthropic/claude-sonnet-4-5", ProviderKind::Anthropic),
            ("google/gemini-2.5-flash", ProviderKind::Vertex),
            ("gemini/gemini-2.5-flash", ProviderKind::Gemini),
        ] {
            let limits = PartLimits {
                max_requests: 3,
                max_bytes: LARGE,
            };
            let mut builder = builder(provider_model).with_limits(limits);
            let requests = texts(7);
            let mut parts = push_all(&mut builder, &requests);
            parts.extend(builder.finish());
            let sizes: Vec<usize> = parts.iter().map(|p| p.custom_ids.len()).collect();
            assert_eq!(sizes, [3, 3, 1], "{provider_model}");
            let reasons: Vec<Option<SplitReason>> = parts.iter().map(|p| p.split).collect();
            let by_count = Some(SplitReason::RequestCount { limit: 3 });
            assert_eq!(reasons, [by_count, by_count, None], "{provider_model}");
            assert_parts_cover(provider, &parts, &requests);
        }
    }

    #[test]
    fn bedrock_parts_never_fall_under_its_record_minimum() {
        let bedrock = "bedrock/amazon.nova-lite-v1:0";
        let limits = PartLimits {
            max_requests: 250,
            max_bytes: LARGE,
        };
        // (rows, part sizes): the last part takes rows from the one before it only
        // when it would be under 100; a job under 100 rows stays one part.
        for (rows, expected) in [
            (40, vec![40]),
            (250, vec![250]),
            (251, vec![151, 100]),
            (320, vec![220, 100]),
            (350, vec![250, 100]),
            (600, vec![250, 250, 100]),
            (700, vec![250, 250, 200]),
        ] {
            let mut builder = builder(bedrock).with_limits(limits);
            let requests = texts(rows);
            let mut parts = push_all(&mut builder, &requests);
            parts.extend(builder.finish());
            let sizes: Vec<usize> = parts.iter().map(|p| p.custom_ids.len()).collect();
            assert_eq!(sizes, expected, "{rows} rows");
            assert_parts_cover(ProviderKind::Bedrock, &parts, &requests);
            let indexes: Vec<u32> = parts.iter().map(|p| p.index).collect();
            assert_eq!(indexes, (0..parts.len() as u32).collect::<Vec<_>>());
        }
        // A refused row is refused when pushed, not when it leaves the reserve.
        let mut builder = builder(bedrock);
        builder.push(&texts(1)[0]).unwrap();
        assert!(builder.push(&texts(1)[0]).is_err(), "a repeated id");
        assert_eq!(builder.finish()[0].custom_ids.len(), 1);
    }

    #[test]
    fn splits_by_bytes_counting_framing_and_never_exceeds_the_limit() {
        for (provider_model, provider) in [
            ("openai/gpt-4o-mini", ProviderKind::OpenAi),
            ("anthropic/claude-sonnet-4-5", ProviderKind::Anthropic),
            ("google/gemini-2.5-flash", ProviderKind::Vertex),
        ] {
            let requests = texts(12);
            let one_line = {
                let mut b = builder(provider_model);
                push_all(&mut b, &requests[..1]);
                b.finish().pop().expect("part").body.len()
            };
            // Room for about three requests per part.
            let max_bytes = one_line * 3 + 10;
            let limits = PartLimits {
                max_requests: 1000,
                max_bytes,
            };
            let mut builder = builder(provider_model).with_limits(limits);
            let mut parts = push_all(&mut builder, &requests);
            parts.extend(builder.finish());
            assert!(parts.len() >= 4, "{provider_model}: {} parts", parts.len());
            for part in &parts {
                assert!(
                    part.body.len() <= max_bytes,
                    "{provider_model}: {} > {max_bytes}",
                    part.body.len()
                );
            }
            let (last, closed) = parts.split_last().expect("parts");
            assert_eq!(last.split, None);
            for part in closed {
                assert_eq!(part.split, Some(SplitReason::ByteSize { limit: max_bytes }));
            }
            assert_parts_cover(provider, &parts, &requests);
        }
    }

    #[test]
    fn a_request_larger_than_a_part_is_refused_and_the_builder_goes_on() {
        let limits = PartLimits {
            max_requests: 10,
            max_bytes: 2000,
        };
        let mut builder = builder("openai/gpt-4o-mini").with_limits(limits);
        let small = texts(1);
        push_all(&mut builder, &small);
        let huge = Request {
            custom_id: "huge".into(),
            messages: vec![Message::new(Role::User, "x".repeat(5000))],
        };
        let before = builder.body.clone();
        let err = builder.push(&huge).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidRequest { custom_id, reason } if custom_id == "huge" && reason.contains("2,000 bytes")),
            "{err}"
        );
        assert_eq!(builder.body, before);
        let part = builder.finish().pop().expect("the small request's part");
        assert_eq!(part.custom_ids, ["request-0"]);
        assert_eq!(part.split, None);
    }

    #[test]
    fn finish_without_requests_has_no_part() {
        assert!(builder("gemini/gemini-2.5-flash").finish().is_empty());
    }

    #[test]
    fn build_batch_returns_every_part_and_says_why() {
        let requests = texts(3);
        let plan = build_batch(
            &model("anthropic/claude-sonnet-4-5"),
            &schema(),
            &GenerationParams::default(),
            &requests,
        )
        .unwrap();
        assert_eq!(plan.summary, "1 part");
        assert_parts_cover(ProviderKind::Anthropic, &plan.parts, &requests);

        let split = |limit| BatchPart {
            index: 0,
            body: Bytes::new(),
            custom_ids: vec![],
            request_rows: vec![],
            split: limit,
        };
        let by_count = Some(SplitReason::RequestCount { limit: 50_000 });
        let by_bytes = Some(SplitReason::ByteSize { limit: 200_000_000 });
        assert_eq!(
            plan_summary(
                ProviderKind::OpenAi,
                &[split(by_count), split(by_count), split(None)]
            ),
            "3 parts: OpenAI allows 50,000 requests per batch"
        );
        assert_eq!(
            plan_summary(
                ProviderKind::OpenAi,
                &[split(by_count), split(by_bytes), split(None)]
            ),
            "3 parts: OpenAI allows 50,000 requests and 200 MB per batch"
        );
    }

    #[test]
    fn build_batch_stops_at_the_first_refused_request() {
        let mut requests = texts(2);
        requests.push(requests[0].clone());
        let err = build_batch(
            &model("openai/gpt-4o"),
            &schema(),
            &GenerationParams::default(),
            &requests,
        )
        .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
    }

    #[test]
    fn encoder_for_translates_the_schema_for_the_provider() {
        let free_form = AnswerFormat::Schema(OutputSchema {
            name: "free".into(),
            schema: json!({"type":"object","properties":{"m":{"type":"object"}}}),
        });
        let params = GenerationParams::default();
        assert!(matches!(
            encoder_for(&model("openai/gpt-4o"), &free_form, &params),
            Err(Error::UnsupportedSchema { .. })
        ));
        for accepting in [
            "anthropic/claude",
            "google/gemini-2.5-pro",
            "gemini/gemini-2.5-pro",
        ] {
            assert!(
                encoder_for(&model(accepting), &free_form, &params).is_ok(),
                "{accepting}"
            );
        }
    }

    #[test]
    fn split_reasons_read_naturally() {
        assert_eq!(
            SplitReason::RequestCount { limit: 100_000 }.to_string(),
            "100,000 requests"
        );
        assert_eq!(
            SplitReason::ByteSize { limit: 256_000_000 }.to_string(),
            "256 MB"
        );
        assert_eq!(
            SplitReason::ByteSize { limit: 2_500 }.to_string(),
            "2,500 bytes"
        );
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(256_000_000), "256,000,000");
    }
}
