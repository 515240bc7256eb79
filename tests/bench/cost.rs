//! Section 5, cost per 1,000 rows: one realistic workload ([`crate::invoices`]) billed
//! through the emulator's token accounting ([`batchline_emulator::model::run_request`])
//! in process, no HTTP: the requests the reference library builds (one row each, no
//! cache marks) against batchline's with several rows per request and prompt caching
//! off or on. Every configuration gets a fresh [`CacheState`] and one
//! [`CacheState::start_batch`] per batch; all the rows fit in one batch.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use batchline::build::BatchBuilder;
use batchline::model::{ModelRef, ProviderKind};
use batchline::request::PromptCache;
use batchline::{GenerationParams, Message, OutputSchema, Request, Role};
use batchline_emulator::cache::{CacheConfig, CacheState};
use batchline_emulator::model::{Api, Finish, Usage, count_tokens, run_request};
use serde_json::{Value, json};

use crate::child::model_for;
use crate::invoices;

/// Rows of the workload.
pub const ROWS: usize = 10_000;
/// batchline's rows per request, each run with the prompt cache off and on (1 hour):
/// the 1, 5, 10 and 25, and the spec's 50 and 100 to show where it levels off.
pub const ROWS_PER_REQUEST: [usize; 6] = [1, 5, 10, 25, 50, 100];
/// Large enough for 100 packed answers.
const MAX_TOKENS: u32 = 16_384;

/// The extraction schema of this section: nine fields, whose answers are about 60
/// tokens (the workload the cost target names). The reference builds its requests
/// with the same fields (`reference.py`'s `InvoiceRecord`).
pub fn record_schema() -> OutputSchema {
    let string = json!({"type": "string"});
    let number = json!({"type": "number"});
    let fields = [
        ("invoice_number", string.clone()),
        ("issue_date", string.clone()),
        ("vendor", string.clone()),
        ("customer", string.clone()),
        ("subtotal", number.clone()),
        ("payment_terms_days", json!({"type": "integer"})),
        (
            "currency",
            json!({"type": "string", "enum": ["EUR", "USD"]}),
        ),
        ("total", number),
        ("lines", json!({"type": "array", "items": string})),
    ];
    let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
    OutputSchema {
        name: "InvoiceRecord".to_string(),
        schema: json!({
            "type": "object",
            "properties": fields
                .into_iter()
                .map(|(name, schema)| (name.to_string(), schema))
                .collect::<serde_json::Map<String, Value>>(),
            "required": names,
            "additionalProperties": false,
        }),
    }
}
/// The providers compared (those the reference library supports).
pub const PROVIDERS: [ProviderKind; 2] = [ProviderKind::Anthropic, ProviderKind::OpenAi];

/// The date of the list prices below.
pub const PRICES_DATE: &str = "2026-12";

/// A model's list batch prices, USD per million tokens.
#[derive(Debug, Clone, Copy)]
pub struct Prices {
    /// Uncached input.
    pub input: f64,
    /// Input read from the prompt cache.
    pub cache_read: f64,
    /// Input written to the 5-minute cache (OpenAI: not billed apart, so input).
    pub cache_write_5m: f64,
    /// Input written to the 1-hour cache (OpenAI: input).
    pub cache_write_1h: f64,
    /// Output.
    pub output: f64,
}

impl Prices {
    /// List batch prices as of [`PRICES_DATE`]: Anthropic claude-sonnet-4-5 and OpenAI
    /// gpt-4o-mini (the models the bench uses for them).
    pub fn of(provider: ProviderKind) -> Self {
        match provider {
            ProviderKind::Anthropic => Self {
                input: 1.50,
                cache_read: 0.15,
                cache_write_5m: 1.875,
                cache_write_1h: 3.00,
                output: 7.50,
            },
            _ => Self {
                input: 0.075,
                cache_read: 0.0375,
                cache_write_5m: 0.075,
                cache_write_1h: 0.075,
                output: 0.30,
            },
        }
    }

    /// What `usage` costs, in USD.
    pub fn usd(&self, usage: &Usage) -> f64 {
        (usage.input as f64 * self.input
            + usage.cache_read as f64 * self.cache_read
            + usage.cache_write_5m as f64 * self.cache_write_5m
            + usage.cache_write_1h as f64 * self.cache_write_1h
            + usage.output as f64 * self.output)
            / 1e6
    }

    /// One line for the printed output.
    pub fn describe(&self, provider: ProviderKind) -> String {
        let model = model_for(provider);
        match provider {
            ProviderKind::Anthropic => format!(
                "{model} batch: ${}/M input, ${}/M output, cache write 1h ${}/M, 5m ${}/M, cache read ${}/M",
                self.input, self.output, self.cache_write_1h, self.cache_write_5m, self.cache_read
            ),
            _ => format!(
                "{model} batch: ${}/M input, ${}/M output, cached input ${}/M",
                self.input, self.output, self.cache_read
            ),
        }
    }
}

/// Who built the requests of a configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builder {
    /// The reference library, one row per request, no cache marks.
    Reference,
    /// batchline with this many rows per request and this prompt cache.
    Batchline(usize, PromptCache),
}

/// One configuration billed: its usage summed over every request.
#[derive(Debug, Clone)]
pub struct CostRow {
    pub provider: ProviderKind,
    pub builder: Builder,
    pub requests: usize,
    pub usage: Usage,
    pub usd: f64,
}

impl CostRow {
    /// USD per 1,000 rows.
    pub fn usd_per_1000(&self) -> f64 {
        self.usd * 1000.0 / ROWS as f64
    }

    /// Tokens per row.
    pub fn per_row(&self, tokens: u64) -> f64 {
        tokens as f64 / ROWS as f64
    }
}

/// The section's results.
pub struct CostTable {
    /// `o200k` tokens of the system prompt.
    pub system_prompt_tokens: u64,
    /// Mean `o200k` tokens of a row's invoice text.
    pub row_text_tokens: f64,
    pub rows: Vec<CostRow>,
}

impl CostTable {
    /// The reference's row for `provider`.
    pub fn reference(&self, provider: ProviderKind) -> Option<&CostRow> {
        self.rows
            .iter()
            .find(|r| r.provider == provider && r.builder == Builder::Reference)
    }

    /// batchline's cheapest row for `provider`.
    pub fn best(&self, provider: ProviderKind) -> Option<&CostRow> {
        self.rows
            .iter()
            .filter(|r| r.provider == provider && r.builder != Builder::Reference)
            .min_by(|a, b| a.usd.total_cmp(&b.usd))
    }
}

/// The emulated model's API for `provider`'s request bodies; Bedrock's Converse
/// records are not billed here (the reference library has no Bedrock to compare with).
fn api(provider: ProviderKind) -> Result<Api, String> {
    match provider {
        ProviderKind::OpenAi => Ok(Api::OpenAi),
        ProviderKind::Anthropic => Ok(Api::Anthropic),
        ProviderKind::Vertex => Ok(Api::Vertex),
        ProviderKind::Gemini => Ok(Api::Gemini),
        ProviderKind::Bedrock => Err("the cost bench does not bill Bedrock records".into()),
    }
}

/// The field of a batch input item that holds the request body the model sees.
fn body_field(provider: ProviderKind) -> &'static str {
    match provider {
        ProviderKind::Anthropic => "params",
        _ => "body",
    }
}

/// The request bodies of one batch input: JSONL items (OpenAI, and the reference's
/// Anthropic file) or one `{"requests": [...]}` document (batchline's Anthropic part).
fn request_bodies(provider: ProviderKind, input: &[u8]) -> Result<Vec<Value>, String> {
    let items: Vec<Value> = match serde_json::from_slice::<Value>(input) {
        Ok(Value::Object(mut document)) if document.contains_key("requests") => {
            match document.remove("requests") {
                Some(Value::Array(items)) => items,
                _ => return Err("`requests` is not an array".into()),
            }
        }
        _ => input
            .split(|b| *b == b'\n')
            .filter(|line| !line.trim_ascii().is_empty())
            .map(|line| serde_json::from_slice(line).map_err(|e| format!("batch line: {e}")))
            .collect::<Result<_, _>>()?,
    };
    let field = body_field(provider);
    items
        .into_iter()
        .map(|mut item| {
            item.get_mut(field)
                .map(Value::take)
                .ok_or_else(|| format!("a request without `{field}`"))
        })
        .collect()
}

/// Bills `batches` (each a batch's request bodies) with a fresh cache; every answer must
/// be whole.
fn bill(
    provider: ProviderKind,
    builder: Builder,
    batches: &[Vec<Value>],
) -> Result<CostRow, String> {
    let model = model_for(provider);
    let api = api(provider)?;
    let mut cache = CacheState::new(CacheConfig::default());
    let mut usage = Usage::default();
    let mut requests = 0;
    for batch in batches {
        cache.start_batch();
        for body in batch {
            let reply = run_request(api, model, body, &mut cache);
            match reply.outcome {
                Ok(output) if output.finish == Finish::Stop && output.structured => {}
                other => {
                    return Err(format!(
                        "{provider} {builder:?}: request {requests} not answered whole: {other:?}"
                    ));
                }
            }
            usage += reply.usage;
            requests += 1;
        }
    }
    Ok(CostRow {
        provider,
        builder,
        requests,
        usd: Prices::of(provider).usd(&usage),
        usage,
    })
}

/// batchline's batches for `provider`: the rows packed `rows_per_request` to a request.
fn batchline_batches(
    provider: ProviderKind,
    rows_per_request: usize,
    prompt_cache: PromptCache,
    rows: &[Request],
    system_prompt: &str,
) -> Result<Vec<Vec<Value>>, String> {
    let model: ModelRef = model_for(provider).parse().map_err(|e| format!("{e}"))?;
    let params = GenerationParams {
        max_tokens: MAX_TOKENS,
        temperature: Some(0.1),
        system_prompt: Some(system_prompt.to_string()),
        prompt_cache,
    };
    let mut builder =
        BatchBuilder::packed(&model, &record_schema().into(), &params, rows_per_request)
            .map_err(|e| e.to_string())?;
    let mut parts = Vec::new();
    for row in rows {
        parts.extend(builder.push(row).map_err(|e| e.to_string())?);
    }
    parts.extend(builder.finish());
    parts
        .iter()
        .map(|part| request_bodies(provider, &part.body))
        .collect()
}

/// The reference library's batch for `provider`, built by `reference.py requests`
/// from the conversations in `conversations` (system prompt, then the row).
fn reference_batches(
    provider: ProviderKind,
    python: &Path,
    script: &Path,
    conversations: &Path,
    dir: &Path,
) -> Result<Vec<Vec<Value>>, String> {
    let out = dir.join(format!("reference-requests-{provider}.jsonl"));
    let status = Command::new(python)
        .arg(script)
        .args(["requests", provider.as_str()])
        .arg(conversations)
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !status.success() {
        return Err(format!("reference.py requests {provider}: {status}"));
    }
    let input = std::fs::read(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(vec![request_bodies(provider, &input)?])
}

/// Runs the section: the reference's requests (when `python` is given) and batchline's
/// configurations, for both providers, billed on all cores.
pub fn run(python: Option<&Path>, script: &Path, dir: &Path) -> Result<CostTable, String> {
    let system_prompt = invoices::system_prompt();
    let texts: Vec<String> = (0..ROWS).map(invoices::invoice_text).collect();
    let row_text_tokens = texts.iter().map(|t| count_tokens(t)).sum::<u64>() as f64 / ROWS as f64;
    let rows: Vec<Request> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| Request {
            custom_id: batchline_emulator::workload::custom_id(i),
            messages: vec![Message::new(Role::User, text.clone())],
        })
        .collect();

    let mut jobs: Vec<(ProviderKind, Builder, Vec<Vec<Value>>)> = Vec::new();
    if let Some(python) = python {
        let conversations = dir.join("cost-conversations.jsonl");
        let mut lines = Vec::new();
        for row in &rows {
            let conversation = Request {
                custom_id: row.custom_id.clone(),
                messages: [
                    vec![Message::new(Role::System, system_prompt.clone())],
                    row.messages.clone(),
                ]
                .concat(),
            };
            serde_json::to_writer(&mut lines, &conversation).map_err(|e| e.to_string())?;
            lines.push(b'\n');
        }
        std::fs::write(&conversations, lines).map_err(|e| e.to_string())?;
        for provider in PROVIDERS {
            crate::progress(&format!("cost: the reference builds {provider} requests"));
            let batches = reference_batches(provider, python, script, &conversations, dir)?;
            jobs.push((provider, Builder::Reference, batches));
        }
    }
    for provider in PROVIDERS {
        for rows_per_request in ROWS_PER_REQUEST {
            for cache in [PromptCache::Off, PromptCache::OneHour] {
                let batches =
                    batchline_batches(provider, rows_per_request, cache, &rows, &system_prompt)?;
                jobs.push((
                    provider,
                    Builder::Batchline(rows_per_request, cache),
                    batches,
                ));
            }
        }
    }

    crate::progress(&format!("cost: billing {} configurations", jobs.len()));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<CostRow, String>>>> = Mutex::new(vec![None; jobs.len()]);
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    std::thread::scope(|scope| {
        for _ in 0..workers.min(jobs.len()) {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some((provider, builder, batches)) = jobs.get(k) else {
                        break;
                    };
                    let row = bill(*provider, *builder, batches);
                    results.lock().expect("no worker panicked")[k] = Some(row);
                }
            });
        }
    });
    let rows = results
        .into_inner()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err("a configuration was not billed".into())))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CostTable {
        system_prompt_tokens: count_tokens(&system_prompt),
        row_text_tokens,
        rows,
    })
}
