//! Deterministic benchmark and streaming-test data: invoice-extraction requests and
//! the results lines each provider would send back for them, in the exact wire shapes
//! of `providers.md`. Row `i` always yields the same bytes, so the Rust bench, the
//! Python reference run and the tests all see identical data without downloads.

use std::io::{self, Write};

use batchline::{GenerationParams, Message, OutputSchema, ProviderKind, Request, Role};
use serde_json::{Value, json};

/// The schema every answer follows: five fields, one of each JSON kind that matters.
pub const SCHEMA_NAME: &str = "Invoice";

pub fn invoice_schema() -> OutputSchema {
    OutputSchema {
        name: SCHEMA_NAME.to_string(),
        schema: json!({
            "type": "object",
            "properties": {
                "vendor": {"type": "string"},
                "total": {"type": "number"},
                "currency": {"type": "string", "enum": ["EUR", "USD"]},
                "paid": {"type": "boolean"},
                "lines": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["vendor", "total", "currency", "paid", "lines"],
            "additionalProperties": false
        }),
    }
}

pub const SYSTEM_PROMPT: &str = "You extract invoices. Return the vendor, the total amount, \
the currency (EUR or USD), whether the invoice is paid, and one string per invoice line. \
Use only what the text says and never guess a value that is not there.";

/// The reference library's defaults (`max_tokens=1000`, `temperature=0.1`); the
/// system prompt is in each conversation, as it is for the reference.
pub fn generation_params() -> GenerationParams {
    GenerationParams {
        max_tokens: 1000,
        temperature: Some(0.1),
        system_prompt: None,
        ..GenerationParams::default()
    }
}

/// Length of every user message, in characters.
pub const USER_CHARS: usize = 600;

/// Line items in an ordinary answer; large answers have more.
pub const ANSWER_ITEMS: usize = 3;

const WORDS: [&str; 24] = [
    "invoice",
    "delivery",
    "consulting",
    "hours",
    "licence",
    "support",
    "hardware",
    "shipping",
    "discount",
    "net",
    "due",
    "within",
    "thirty",
    "days",
    "Müller",
    "café",
    "order",
    "reference",
    "\"urgent\"",
    "quarterly",
    "maintenance",
    "travel",
    "expenses",
    "paid",
];

const VENDORS: [&str; 6] = [
    "ACME GmbH",
    "Globex Ltd",
    "Initech SARL",
    "Umbrella \"Bio\" AG",
    "Soylent Oy",
    "Hooli Inc",
];

/// The request id of row `i`, as both libraries number rows by default.
pub fn custom_id(i: usize) -> String {
    format!("request-{i}")
}

/// A small deterministic generator (xorshift64*), seeded per row.
struct Rng(u64);

impl Rng {
    fn for_row(i: usize, stream: u64) -> Self {
        // SplitMix-style mixing so that neighbouring rows get unrelated sequences.
        let mut z = (i as u64 ^ stream.rotate_left(32)).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn hex(&mut self) -> String {
        format!("{:016x}{:08x}", self.next(), self.next() as u32)
    }
}

/// The invoice text of row `i`: about [`USER_CHARS`] characters, with quotes and
/// non-ASCII letters so that encoders have something to escape.
pub fn user_text(i: usize) -> String {
    let mut rng = Rng::for_row(i, 1);
    let mut text = format!(
        "Invoice {i} from {}, total {}.{:02} EUR.\n",
        VENDORS[i % VENDORS.len()],
        i % 9973,
        i % 100
    );
    while text.chars().count() < USER_CHARS {
        text.push_str(WORDS[rng.below(WORDS.len())]);
        text.push(if rng.below(12) == 0 { '.' } else { ' ' });
    }
    text.chars().take(USER_CHARS).collect()
}

/// Row `i` as a conversation: the system prompt, then the invoice text.
pub fn request(i: usize) -> Request {
    Request {
        custom_id: custom_id(i),
        messages: vec![
            Message::new(Role::System, SYSTEM_PROMPT),
            Message::new(Role::User, user_text(i)),
        ],
    }
}

/// Row `i` as a batchline input line (`{"custom_id","messages"}`), which is also
/// what the Python reference run reads its conversations from.
pub fn write_input_line(i: usize, out: &mut impl Write) -> io::Result<()> {
    serde_json::to_writer(&mut *out, &request(i))?;
    out.write_all(b"\n")
}

/// The valid answer of row `i`, with `items` invoice lines.
pub fn answer(i: usize, items: usize) -> Value {
    let mut rng = Rng::for_row(i, 2);
    let lines: Vec<String> = (0..items)
        .map(|n| {
            format!(
                "{} {} x {} at {}.{:02} EUR",
                n + 1,
                WORDS[rng.below(WORDS.len())],
                1 + rng.below(20),
                rng.below(500),
                rng.below(100)
            )
        })
        .collect();
    json!({
        "vendor": VENDORS[i % VENDORS.len()],
        "total": (i % 9973) as f64 + (i % 100) as f64 / 100.0,
        "currency": if i.is_multiple_of(3) { "USD" } else { "EUR" },
        "paid": i.is_multiple_of(2),
        "lines": lines,
    })
}

/// Roughly what the providers count: four characters a token.
fn tokens(chars: usize) -> u64 {
    (chars / 4).max(1) as u64
}

/// Appends row `i`'s successful results line (no newline) in `provider`'s shape.
pub fn write_results_line(
    provider: ProviderKind,
    i: usize,
    items: usize,
    out: &mut impl Write,
) -> io::Result<()> {
    write_answer_line(provider, i, &custom_id(i), &answer(i, items), out)
}

/// Appends the successful results line (no newline) in `provider`'s shape of request
/// `id`, the `i`-th of its part, answering `answer`.
pub fn write_answer_line(
    provider: ProviderKind,
    i: usize,
    id: &str,
    answer: &Value,
    out: &mut impl Write,
) -> io::Result<()> {
    let answer_text = answer.to_string();
    let input_tokens = tokens(SYSTEM_PROMPT.len() + USER_CHARS);
    let output_tokens = tokens(answer_text.len());
    let mut rng = Rng::for_row(i, 3);
    let line = match provider {
        ProviderKind::OpenAi => json!({
            "id": format!("batch_req_{}", rng.hex()),
            "custom_id": id,
            "response": {
                "status_code": 200,
                "request_id": format!("req_{}", rng.hex()),
                "body": {
                    "id": format!("chatcmpl-{}", rng.hex()),
                    "object": "chat.completion",
                    "created": 1_763_683_200 + i as u64,
                    "model": "gpt-4o-mini-2024-07-18",
                    "choices": [{
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": answer_text,
                            "refusal": null,
                            "annotations": []
                        },
                        "logprobs": null,
                        "finish_reason": "stop"
                    }],
                    "usage": {
                        "prompt_tokens": input_tokens,
                        "completion_tokens": output_tokens,
                        "total_tokens": input_tokens + output_tokens,
                        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                        "completion_tokens_details": {
                            "reasoning_tokens": 0,
                            "audio_tokens": 0,
                            "accepted_prediction_tokens": 0,
                            "rejected_prediction_tokens": 0
                        }
                    },
                    "service_tier": "default",
                    "system_fingerprint": format!("fp_{:010x}", rng.next() >> 24)
                }
            },
            "error": null
        }),
        ProviderKind::Anthropic => json!({
            "custom_id": id,
            "result": {
                "type": "succeeded",
                "message": {
                    "id": format!("msg_{}", rng.hex()),
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-5-20250929",
                    "content": [{
                        "type": "tool_use",
                        "id": format!("toolu_{}", rng.hex()),
                        "name": SCHEMA_NAME,
                        "input": answer
                    }],
                    "stop_reason": "tool_use",
                    "stop_sequence": null,
                    "usage": {
                        "input_tokens": input_tokens,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                        "output_tokens": output_tokens,
                        "service_tier": "batch"
                    }
                }
            }
        }),
        ProviderKind::Vertex => json!({
            "status": "",
            "processed_time": "2026-11-21T10:00:00.000+00:00",
            // Vertex echoes the request, labels and all.
            "request": {
                "contents": [{"role": "user", "parts": [{"text": user_text(i)}]}],
                "systemInstruction": {"parts": [{"text": SYSTEM_PROMPT}]},
                "generationConfig": {
                    "maxOutputTokens": 1000,
                    "temperature": 0.1,
                    "responseMimeType": "application/json",
                    "responseJsonSchema": invoice_schema().schema
                },
                "labels": {"batchline_row": i.to_string()}
            },
            "response": gemini_response(&answer_text, input_tokens, output_tokens, &mut rng)
        }),
        ProviderKind::Gemini => json!({
            "key": id,
            "response": gemini_response(&answer_text, input_tokens, output_tokens, &mut rng)
        }),
        // Bedrock echoes the whole Converse request before the answer.
        ProviderKind::Bedrock => json!({
            "recordId": id,
            "modelInput": {
                "messages": [{"role": "user", "content": [{"text": user_text(i)}]}],
                "system": [{"text": SYSTEM_PROMPT}],
                "inferenceConfig": {"maxTokens": 1000, "temperature": 0.1},
                "toolConfig": {
                    "tools": [{"toolSpec": {
                        "name": SCHEMA_NAME,
                        "description": "Record the requested information.",
                        "inputSchema": {"json": invoice_schema().schema}
                    }}],
                    "toolChoice": {"tool": {"name": SCHEMA_NAME}}
                }
            },
            "modelOutput": {
                "output": {"message": {"role": "assistant", "content": [{"toolUse": {
                    "toolUseId": format!("tooluse_{}", rng.hex()),
                    "name": SCHEMA_NAME,
                    "input": answer
                }}]}},
                "stopReason": "tool_use",
                "usage": {
                    "inputTokens": input_tokens,
                    "outputTokens": output_tokens,
                    "totalTokens": input_tokens + output_tokens
                },
                "metrics": {"latencyMs": 1200}
            }
        }),
    };
    serde_json::to_writer(out, &line).map_err(io::Error::from)
}

/// A `GenerateContentResponse` whose one candidate's text is the answer.
fn gemini_response(answer: &str, input_tokens: u64, output_tokens: u64, rng: &mut Rng) -> Value {
    json!({
        "candidates": [{
            "content": {"role": "model", "parts": [{"text": answer}]},
            "finishReason": "STOP",
            "avgLogprobs": -0.0421,
            "index": 0
        }],
        "usageMetadata": {
            "promptTokenCount": input_tokens,
            "candidatesTokenCount": output_tokens,
            "totalTokenCount": input_tokens + output_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": input_tokens}]
        },
        "modelVersion": "gemini-2.5-flash",
        "responseId": rng.hex()
    })
}

/// Writes the results lines of rows `0..` until `size` is reached; returns how many.
pub fn write_results_file(
    provider: ProviderKind,
    size: FileSize,
    items: usize,
    out: &mut impl Write,
) -> io::Result<usize> {
    let mut written = 0u64;
    let mut line = Vec::with_capacity(4096);
    let mut rows = 0;
    while !size.reached(rows, written) {
        line.clear();
        write_results_line(provider, rows, items, &mut line)?;
        line.push(b'\n');
        out.write_all(&line)?;
        written += line.len() as u64;
        rows += 1;
    }
    Ok(rows)
}

/// How long a generated results file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileSize {
    Rows(usize),
    /// Whole lines until at least this many bytes.
    Bytes(u64),
}

impl FileSize {
    fn reached(self, rows: usize, bytes: u64) -> bool {
        match self {
            FileSize::Rows(n) => rows >= n,
            FileSize::Bytes(n) => bytes >= n,
        }
    }
}

/// Answer items that make one results line about `line_bytes` long (each item is
/// about 35 bytes once escaped into the line).
pub fn items_for_line_bytes(line_bytes: usize) -> usize {
    line_bytes.saturating_sub(1_000) / 35 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use batchline::results::{Outcome, ResultParser};
    use std::sync::Arc;

    #[test]
    fn rows_are_deterministic_and_the_text_has_the_promised_length() {
        assert_eq!(user_text(7), user_text(7));
        assert_ne!(user_text(7), user_text(8));
        assert_eq!(user_text(7).chars().count(), USER_CHARS);
        assert_eq!(answer(5, 3), answer(5, 3));
        let mut a = Vec::new();
        let mut b = Vec::new();
        write_results_line(ProviderKind::OpenAi, 3, 3, &mut a).unwrap();
        write_results_line(ProviderKind::OpenAi, 3, 3, &mut b).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn every_provider_line_parses_as_a_valid_success_of_its_row() {
        let ids: Arc<[String]> = (0..4).map(custom_id).collect();
        for provider in ProviderKind::ALL {
            let parser = ResultParser::new(provider, &invoice_schema(), ids.clone()).unwrap();
            for row in 0..4 {
                let mut line = Vec::new();
                write_results_line(provider, row, 3, &mut line).unwrap();
                match parser.parse_line(row as u64 + 1, &line) {
                    Outcome::Success(success) => {
                        assert_eq!(success.custom_id, custom_id(row), "{provider}");
                        assert_eq!(success.result, answer(row, 3), "{provider}");
                        assert!(success.usage.output_tokens > 0, "{provider}");
                    }
                    Outcome::Error(failure) => panic!("{provider}: {failure:?}"),
                }
            }
        }
    }

    #[test]
    fn files_stop_at_their_size_and_large_answers_reach_their_line_length() {
        let mut out = Vec::new();
        let rows =
            write_results_file(ProviderKind::Gemini, FileSize::Rows(5), 3, &mut out).unwrap();
        assert_eq!(rows, 5);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 5);

        let mut out = Vec::new();
        let rows =
            write_results_file(ProviderKind::OpenAi, FileSize::Bytes(10_000), 3, &mut out).unwrap();
        assert!(out.len() >= 10_000 && rows > 1);

        let mut line = Vec::new();
        write_results_line(
            ProviderKind::OpenAi,
            0,
            items_for_line_bytes(20_000),
            &mut line,
        )
        .unwrap();
        assert!((16_000..24_000).contains(&line.len()), "{}", line.len());
    }

    #[test]
    fn input_lines_are_batchline_requests() {
        let mut out = Vec::new();
        write_input_line(2, &mut out).unwrap();
        let back: Request = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, request(2));
    }
}
