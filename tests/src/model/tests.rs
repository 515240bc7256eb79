use serde_json::{Value, json};

use super::*;
use crate::cache::{CacheConfig, CacheState};

fn cache() -> CacheState {
    CacheState::new(CacheConfig {
        miss_rate: 0.0,
        unkeyed_miss_rate: 0.0,
        wave_size: 1,
        ..CacheConfig::default()
    })
}

fn row_schema() -> Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string"},
        "amount": {"type": "integer", "minimum": 0, "maximum": 1000}
    }, "required": ["name", "amount"], "additionalProperties": false})
}

fn rows_schema(n: u64) -> Value {
    let keys: Vec<String> = (1..=n).map(|k| k.to_string()).collect();
    let properties: Map<String, Value> = keys
        .iter()
        .map(|k| (k.clone(), json!({"$ref": "#/$defs/row"})))
        .collect();
    json!({"type": "object", "properties": properties, "required": keys,
        "additionalProperties": false, "$defs": {"row": row_schema()}})
}

fn rows_text(rows: &[&str]) -> String {
    rows.iter()
        .enumerate()
        .map(|(i, row)| format!("### {}\n{row}", i + 1))
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn openai_body(user: &str, schema: Value) -> Value {
    json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": format!("Extract.\n\n{ROWS_INSTRUCTION}")},
        {"role": "user", "content": user}
    ], "response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": true, "schema": schema}}})
}

fn text_of(reply: &Reply) -> &str {
    &reply.outcome.as_ref().expect("an answer").text
}

#[test]
fn tokens_are_o200k_counts() {
    assert_eq!(count_tokens("hello world"), 2);
    assert_eq!(count_tokens(""), 0);
    let sentence = "The quick brown fox jumps over the lazy dog.";
    assert_eq!(count_tokens(sentence), 10);
    assert_eq!(first_tokens(sentence, 3), "The quick brown");
    // Plausible against the usual four characters a token for English prose.
    let prose = "Invoices are due within thirty days of receipt. ".repeat(50);
    let n = count_tokens(&prose) as usize;
    assert!((prose.len() / 6..prose.len() / 3).contains(&n), "{n}");
}

#[test]
fn prompt_counts_definitions_system_and_messages() {
    let body = openai_body("a b c", row_schema());
    let reply = run_request(Api::OpenAi, "gpt-4o-mini", &body, &mut cache());
    let expected = count_tokens(&body["response_format"].to_string())
        + MESSAGE_OVERHEAD
        + count_tokens(body["messages"][0]["content"].as_str().unwrap())
        + MESSAGE_OVERHEAD
        + count_tokens("a b c")
        + REPLY_OVERHEAD;
    assert_eq!(reply.usage.prompt(), expected);
    assert_eq!(reply.usage.output, count_tokens(text_of(&reply)));
}

#[test]
fn answers_come_from_the_rows_own_text() {
    let rows = [
        "Alice Walker paid 120 dollars",
        "Bob Stone paid 450 dollars",
        "Carol King paid 999 dollars",
    ];
    let body = openai_body(&rows_text(&rows), rows_schema(3));
    let reply = run_request(Api::OpenAi, "gpt-4o-mini", &body, &mut cache());
    let answer: Value = serde_json::from_str(text_of(&reply)).unwrap();
    let expected_amounts = [120, 450, 999];
    for (i, row) in rows.iter().enumerate() {
        let value = &answer[(i + 1).to_string()];
        assert_eq!(value["amount"], expected_amounts[i], "{answer}");
        let name = value["name"].as_str().unwrap();
        assert!(
            name.split(' ').all(|w| row.contains(w)),
            "{name} not from {row}"
        );
    }
    assert_eq!(
        reply,
        run_request(Api::OpenAi, "gpt-4o-mini", &body, &mut cache())
    );
}

#[test]
fn row_faults_drop_invent_and_repeat_keys() {
    let rows = ["one 1", "two 2 [[fault:drop_row]]", "three 3"];
    let body = openai_body(&rows_text(&rows), rows_schema(3));
    let text = text_of(&run_request(Api::OpenAi, "m", &body, &mut cache())).to_string();
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert!(
        answer.get("2").is_none() && answer.get("3").is_some(),
        "{text}"
    );

    let rows = ["one 1 [[fault:invent_row]]", "two 2"];
    let body = openai_body(&rows_text(&rows), rows_schema(2));
    let text = text_of(&run_request(Api::OpenAi, "m", &body, &mut cache())).to_string();
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert!(answer.get("3").is_some(), "{text}");

    let rows = ["one 1", "two words 2 [[fault:repeat_row]]"];
    let body = openai_body(&rows_text(&rows), rows_schema(2));
    let text = text_of(&run_request(Api::OpenAi, "m", &body, &mut cache())).to_string();
    assert_eq!(text.matches("\"2\":").count(), 2, "{text}");
    assert!(serde_json::from_str::<Value>(&text).is_ok(), "{text}");
}

#[test]
fn without_headings_the_whole_text_answers() {
    let body = openai_body("no headings 5", rows_schema(2));
    let reply = run_request(Api::OpenAi, "m", &body, &mut cache());
    let answer: Value = serde_json::from_str(text_of(&reply)).unwrap();
    assert!(answer["1"].is_object() && answer["2"].is_object());
}

#[test]
fn answers_are_cut_at_max_tokens_for_every_provider() {
    let long = "word ".repeat(200);
    let schema = row_schema();
    let openai = json!({"model": "gpt-4o", "max_completion_tokens": 5,
        "messages": [{"role": "user", "content": long}],
        "response_format": {"json_schema": {"schema": schema}}});
    let anthropic = json!({"model": "claude-sonnet-4-5", "max_tokens": 5,
        "tools": [{"name": "t", "input_schema": schema}],
        "tool_choice": {"type": "tool", "name": "t"},
        "messages": [{"role": "user", "content": long}]});
    let google = json!({"contents": [{"role": "user", "parts": [{"text": long}]}],
        "generationConfig": {"maxOutputTokens": 5, "responseMimeType": "application/json",
            "responseJsonSchema": schema}});
    for (api, body) in [
        (Api::OpenAi, openai),
        (Api::Anthropic, anthropic),
        (Api::Gemini, google),
    ] {
        let reply = run_request(api, "m", &body, &mut cache());
        let output = reply.outcome.unwrap();
        assert_eq!(output.finish, Finish::Length, "{api:?}");
        assert_eq!(reply.usage.output, 5, "{api:?}");
        assert!(serde_json::from_str::<Value>(&output.text).is_err());
        assert!(close_partial_json(&output.text).is_object());
    }
}

#[test]
fn partial_json_keeps_what_was_written() {
    assert_eq!(close_partial_json(r#"{"name": "Al"#), json!({"name": "Al"}));
    assert_eq!(
        close_partial_json(r#"{"a": 1, "b": [1, 2"#),
        json!({"a": 1, "b": [1, 2]})
    );
    assert_eq!(close_partial_json(r#"{"a": 1, "b"#), json!({"a": 1}));
    assert_eq!(close_partial_json("{"), json!({}));
}

#[test]
fn prompts_over_the_context_window_fail() {
    let huge = "lorem ipsum ".repeat(70_000);
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": huge}]});
    let reply = run_request(Api::OpenAi, "gpt-4o", &body, &mut cache());
    match reply.outcome {
        Err(Failure::ContextLength { tokens, limit }) => {
            assert_eq!(limit, 128_000);
            assert!(tokens > limit);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reply.usage, Usage::default());
    // The same prompt fits Gemini's window.
    let google = json!({"contents": [{"role": "user", "parts": [{"text": huge}]}]});
    assert!(
        run_request(Api::Gemini, "gemini-2.5-flash", &google, &mut cache())
            .outcome
            .is_ok()
    );
    assert_eq!(context_window("claude-sonnet-4-5"), 200_000);
    assert_eq!(context_window("unknown"), 128_000);
}

fn long_system() -> String {
    "Policy clause about invoices and their totals. ".repeat(200)
}

fn anthropic_body(model: &str, ttl: &str, user: &str) -> Value {
    json!({"model": model, "max_tokens": 1000, "system": [
        {"type": "text", "text": long_system(), "cache_control": {"type": "ephemeral", "ttl": ttl}}
    ], "messages": [{"role": "user", "content": user}]})
}

#[test]
fn anthropic_caches_breakpoint_prefixes() {
    let mut cache = cache();
    let model = "claude-sonnet-4-5";
    let first = run_request(
        Api::Anthropic,
        model,
        &anthropic_body(model, "1h", "row a"),
        &mut cache,
    )
    .usage;
    assert_eq!(first.cache_read, 0);
    assert!(first.cache_write_1h > 1024, "{first:?}");
    assert_eq!(first.cache_write_5m, 0);
    let json = first.to_provider_json(Api::Anthropic);
    assert_eq!(json["cache_creation_input_tokens"], first.cache_write_1h);
    assert_eq!(
        json["cache_creation"]["ephemeral_1h_input_tokens"],
        first.cache_write_1h
    );
    let second = run_request(
        Api::Anthropic,
        model,
        &anthropic_body(model, "1h", "row b"),
        &mut cache,
    )
    .usage;
    assert_eq!(second.cache_read, first.cache_write_1h);
    assert_eq!(second.cache_write_1h, 0);
    assert_eq!(second.input, first.input, "only the rest is input");

    // Below the Haiku 4.5 minimum nothing is cached.
    let haiku = "claude-haiku-4-5";
    let small = run_request(
        Api::Anthropic,
        haiku,
        &anthropic_body(haiku, "5m", "x"),
        &mut cache,
    )
    .usage;
    assert_eq!((small.cache_read, small.cache_write_5m), (0, 0));
    assert!(small.input > 1024);

    // The 5-minute entry is gone after six simulated minutes.
    let model = "claude-opus-4-1";
    let write = run_request(
        Api::Anthropic,
        model,
        &anthropic_body(model, "5m", "y"),
        &mut cache,
    )
    .usage;
    assert!(write.cache_write_5m > 0);
    cache.advance(360);
    let later = run_request(
        Api::Anthropic,
        model,
        &anthropic_body(model, "5m", "z"),
        &mut cache,
    )
    .usage;
    assert_eq!(later.cache_read, 0);
    assert_eq!(later.cache_write_5m, write.cache_write_5m);
}

#[test]
fn anthropic_rejects_bad_breakpoints() {
    let block = json!({"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}});
    let five = json!({"model": "m", "system": vec![block.clone(); 5], "messages": []});
    assert!(
        check_cache_control(&five)
            .unwrap_err()
            .contains("maximum of 4")
    );
    let bad_ttl = json!({"system": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "2h"}}]});
    assert!(check_cache_control(&bad_ttl).is_err());
    assert!(check_cache_control(&json!({"system": vec![block; 4]})).is_ok());
}

#[test]
fn openai_caches_prefixes_in_128_token_steps() {
    let mut cache = cache();
    let body = |user: &str| {
        json!({"model": "gpt-4o", "prompt_cache_key": "k", "messages": [
            {"role": "system", "content": long_system()},
            {"role": "user", "content": user}
        ]})
    };
    let first = run_request(Api::OpenAi, "gpt-4o", &body("a"), &mut cache).usage;
    assert_eq!(first.cache_read, 0);
    assert_eq!((first.cache_write_5m, first.cache_write_1h), (0, 0));
    let second = run_request(Api::OpenAi, "gpt-4o", &body("b"), &mut cache).usage;
    assert!(second.cache_read >= 1024);
    assert_eq!((second.cache_read - 1024) % 128, 0);
    assert!(second.cache_read <= second.prompt());
    let json = second.to_provider_json(Api::OpenAi);
    assert_eq!(json["prompt_tokens"], second.prompt());
    assert_eq!(
        json["prompt_tokens_details"]["cached_tokens"],
        second.cache_read
    );
    // Short prompts are never cached.
    let short = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    run_request(Api::OpenAi, "gpt-4o", &short, &mut cache);
    assert_eq!(
        run_request(Api::OpenAi, "gpt-4o", &short, &mut cache)
            .usage
            .cache_read,
        0
    );
}

#[test]
fn google_caches_prefixes_above_the_model_minimum() {
    let mut cache = cache();
    let body = json!({"systemInstruction": {"parts": [{"text": long_system()}]},
        "contents": [{"role": "user", "parts": [{"text": "row"}]}]});
    run_request(Api::Vertex, "gemini-2.5-flash", &body, &mut cache);
    let hit = run_request(Api::Vertex, "gemini-2.5-flash", &body, &mut cache).usage;
    assert!(hit.cache_read >= 1024, "{hit:?}");
    assert_eq!(
        hit.to_provider_json(Api::Vertex)["cachedContentTokenCount"],
        hit.cache_read
    );
    // About 1,800 tokens: under the Pro minimum.
    run_request(Api::Gemini, "gemini-2.5-pro", &body, &mut cache);
    let pro = run_request(Api::Gemini, "gemini-2.5-pro", &body, &mut cache).usage;
    assert_eq!(pro.cache_read, 0);
}

#[test]
fn a_wave_does_not_see_its_own_writes() {
    let mut cache = CacheState::new(CacheConfig {
        miss_rate: 0.0,
        wave_size: 4,
        ..CacheConfig::default()
    });
    let model = "claude-sonnet-4-5";
    let reads: Vec<u64> = (0..6)
        .map(|i| {
            let body = anthropic_body(model, "1h", &format!("row {i}"));
            run_request(Api::Anthropic, model, &body, &mut cache)
                .usage
                .cache_read
        })
        .collect();
    assert!(reads[..4].iter().all(|r| *r == 0), "{reads:?}");
    assert!(reads[4..].iter().all(|r| *r > 0), "{reads:?}");
}

#[test]
fn whole_request_faults_still_apply() {
    let body = |marker: &str| openai_body(&format!("text [[fault:{marker}]]"), row_schema());
    let run = |marker: &str| run_request(Api::OpenAi, "gpt-4o", &body(marker), &mut cache());
    assert!(matches!(
        run("provider_error").outcome,
        Err(Failure::ContextLength { .. })
    ));
    assert_eq!(run("rate_limit").outcome, Err(Failure::RateLimit));
    assert_eq!(run("refusal").outcome.unwrap().finish, Finish::Refusal);
    let truncated = run("truncate").outcome.unwrap();
    assert_eq!(truncated.finish, Finish::Length);
    assert!(serde_json::from_str::<Value>(&truncated.text).is_err());
}
