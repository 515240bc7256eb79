//! Bad input tried, end to end: every case becomes a clear error record that names
//! the file, the line and the reason (a line's error under its id or `line-N`; a
//! whole-file problem in the job record), good lines in the same file still go
//! through, nothing crashes and nothing is retried forever.

mod support;

use std::io::Write;

use batchline::model::ProviderKind;
use batchline::pipeline::job::{JobStatus, keys};
use batchline::pipeline::submit::{SubmitOutcome, UploadedObject, submit};
use serde_json::{Value, json};
use support::report::{BatchCount, Category, Measured, record};
use support::{Harness, header, invoice_schema, model_for};

/// One bad line: its text, the id its error must carry (`None`: `line-N`), a word
/// of the reason, and whether only Anthropic refuses it (its id pattern).
struct LineCase {
    name: &'static str,
    line: Vec<u8>,
    id: Option<&'static str>,
    reason: &'static str,
    anthropic_only: bool,
}

fn case(
    name: &'static str,
    line: Value,
    id: Option<&'static str>,
    reason: &'static str,
) -> LineCase {
    LineCase {
        name,
        line: line.to_string().into_bytes(),
        id,
        reason,
        anthropic_only: false,
    }
}

fn raw(
    name: &'static str,
    line: &[u8],
    id: Option<&'static str>,
    reason: &'static str,
) -> LineCase {
    LineCase {
        name,
        line: line.to_vec(),
        id,
        reason,
        anthropic_only: false,
    }
}

const MAX_LINE: usize = 4096;

fn line_cases() -> Vec<LineCase> {
    let user = |text: &str| json!([{"role": "user", "content": text}]);
    vec![
        raw(
            "a line that is not JSON",
            b"this is not json",
            None,
            "not a valid request",
        ),
        raw(
            "a JSON array instead of an object",
            b"[1, 2, 3]",
            None,
            "not a valid request",
        ),
        raw(
            "a JSON string instead of an object",
            b"\"just text\"",
            None,
            "not a valid request",
        ),
        raw("NUL bytes", b"\0\0\0", None, "not a valid request"),
        raw(
            "trailing garbage after the object",
            br#"{"custom_id": "c-trail", "text": "x"} and more"#,
            None,
            "trailing characters",
        ),
        raw(
            "invalid UTF-8 inside a line",
            b"{\"custom_id\": \"c-utf8\", \"text\": \"\xff\xfe\"}",
            None,
            "not UTF-8",
        ),
        case(
            "neither messages nor text",
            json!({"custom_id": "c-neither"}),
            Some("c-neither"),
            "neither",
        ),
        case(
            "both messages and text",
            json!({"custom_id": "c-both", "text": "x", "messages": user("y")}),
            Some("c-both"),
            "both",
        ),
        case(
            "an empty conversation",
            json!({"custom_id": "c-empty", "messages": []}),
            Some("c-empty"),
            "empty",
        ),
        case(
            "a role the providers do not accept",
            json!({"custom_id": "c-role", "messages": [{"role": "tool", "content": "x"}]}),
            Some("c-role"),
            "unknown variant",
        ),
        case(
            "a conversation without a user message",
            json!({"custom_id": "c-nouser", "messages": [{"role": "assistant", "content": "x"}]}),
            Some("c-nouser"),
            "no user message",
        ),
        case(
            "a message without a role",
            json!({"custom_id": "c-norole", "messages": [{"content": "x"}]}),
            Some("c-norole"),
            "missing field `role`",
        ),
        case(
            "message content that is not text",
            json!({"custom_id": "c-content", "messages": [{"role": "user", "content": [1]}]}),
            Some("c-content"),
            "invalid type",
        ),
        case(
            "text that is not a string",
            json!({"custom_id": "c-textnum", "text": 5}),
            Some("c-textnum"),
            "invalid type",
        ),
        case(
            "an unknown field",
            json!({"custom_id": "c-extra", "text": "x", "temperature": 1}),
            Some("c-extra"),
            "unknown field",
        ),
        case(
            "a second header in the middle of the file",
            json!({"spec": {"model": "openai/gpt-4o-mini"}}),
            None,
            "unknown field `spec`",
        ),
        case(
            "a duplicate custom_id",
            json!({"custom_id": "doc-0", "text": "again"}),
            None,
            "duplicate custom_id",
        ),
        case(
            "a custom_id with '/'",
            json!({"custom_id": "a/b", "text": "x"}),
            None,
            "`/`",
        ),
        case(
            "a custom_id with '..'",
            json!({"custom_id": "..", "text": "x"}),
            None,
            "`..`",
        ),
        case(
            "a custom_id with control characters",
            json!({"custom_id": "a\u{7}b", "text": "x"}),
            None,
            "control",
        ),
        case(
            "an empty custom_id",
            json!({"custom_id": "", "text": "x"}),
            None,
            "empty",
        ),
        case(
            "a custom_id over 256 characters",
            json!({"custom_id": "x".repeat(300), "text": "x"}),
            None,
            "longer than 256",
        ),
        case(
            "a custom_id that is not a string",
            json!({"custom_id": 5, "text": "x"}),
            None,
            "invalid type",
        ),
        case(
            "a line over the spec's max_line_bytes",
            json!({"custom_id": "c-long", "text": "x".repeat(MAX_LINE)}),
            None,
            "more than the 4096 allowed",
        ),
        case(
            "a huge single line (3 MB)",
            json!({"custom_id": "c-huge", "text": "y".repeat(3 * 1024 * 1024)}),
            None,
            "more than the 4096 allowed",
        ),
        LineCase {
            anthropic_only: true,
            ..case(
                "a custom_id the provider forbids (space)",
                json!({"custom_id": "has space", "text": "Invoice"}),
                Some("has space"),
                "must match",
            )
        },
        LineCase {
            anthropic_only: true,
            ..case(
                "a custom_id the provider forbids (dot)",
                json!({"custom_id": "dot.ted", "text": "Invoice"}),
                Some("dot.ted"),
                "must match",
            )
        },
    ]
}

/// Every bad line in one file with three good ones, for every provider: the good
/// ones succeed, each bad one is an `invalid_input` error naming file, line, reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_become_errors_that_name_file_line_and_reason() {
    let h = Harness::start().await;
    let cases = line_cases();
    for kind in ProviderKind::ALL {
        let mut body = header(kind, json!({"max_line_bytes": MAX_LINE})).into_bytes();
        body.push(b'\n');
        let mut expected: Vec<String> = Vec::new();
        for i in 0..3 {
            let id = format!("doc-{i}");
            body.extend(
                json!({"custom_id": id, "text": format!("Invoice {i}")})
                    .to_string()
                    .bytes(),
            );
            body.extend(b"\r\n\n");
            expected.push(id);
        }
        // Header, then three good lines each followed by a blank line.
        let mut line_no = 7u64;
        let mut numbered = Vec::new();
        for case in &cases {
            body.extend(&case.line);
            body.push(b'\n');
            line_no += 1;
            let id = match case.id {
                Some(id) => id.to_string(),
                None => format!("line-{line_no}"),
            };
            expected.push(id.clone());
            numbered.push((case, line_no, id));
        }
        let key = format!("inbox/{kind}/bad lines.jsonl");
        let before = h.provider_batches(kind).await;
        let job = h.submit(&key, body).await;
        let record_before = h.run_to_close(&job).await;
        let results = h
            .check_scenario(
                Category::BadInput,
                &format!("{kind}: a file with {} bad lines", cases.len()),
                &job,
                &expected,
                BatchCount::exact(
                    h.provider_batches(kind).await - before,
                    record_before.parts.len(),
                ),
            )
            .await;
        for (case, line, id) in numbered {
            if case.anthropic_only && kind != ProviderKind::Anthropic {
                assert!(
                    results.successes.iter().any(|s| s["custom_id"] == id),
                    "{kind}: {} is fine for this provider",
                    case.name
                );
                continue;
            }
            let error = results
                .errors
                .iter()
                .find(|e| e["custom_id"] == id.as_str())
                .unwrap_or_else(|| panic!("{kind}: no error for {} ({id})", case.name));
            let message = error["error_message"].as_str().unwrap_or_default();
            assert_eq!(
                error["error_type"], "invalid_input",
                "{kind} {}: {error}",
                case.name
            );
            assert_eq!(error["line"], line, "{kind} {}: {error}", case.name);
            assert!(
                message.contains(&key)
                    && message.contains(&format!("line {line}"))
                    && message.contains(case.reason),
                "{kind} {}: {message}",
                case.name
            );
            record(
                Category::BadInput,
                &format!("{kind}: {}", case.name),
                Measured::default(),
            );
        }
        assert_eq!(
            results
                .successes
                .iter()
                .filter(|s| s["custom_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("doc-")))
                .count(),
            3,
            "{kind}: the good lines went through"
        );
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

fn spec_value(kind: ProviderKind, extra: Value) -> Value {
    let header: Value = serde_json::from_str(&header(kind, extra)).expect("header");
    header["spec"].clone()
}

/// A file whose problem is the whole file: the job fails with a reason naming the
/// file (and the line where there is one), and no batch is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_file_problems_fail_the_job_with_file_and_reason() {
    let h = Harness::start().await;
    let request = json!({"custom_id": "r1", "text": "Invoice"}).to_string();
    let with_spec = |spec: Value| format!("{}\n{request}\n", json!({ "spec": spec }));
    let openai_spec = |extra: Value| spec_value(ProviderKind::OpenAi, extra);
    let mut utf16 = vec![0xFF, 0xFE];
    for unit in header(ProviderKind::OpenAi, json!({})).encode_utf16() {
        utf16.extend(unit.to_le_bytes());
    }
    let utf16_without_bom: Vec<u8> = utf16[2..].to_vec();
    let mut broken_gzip = vec![0x1f, 0x8b];
    broken_gzip.extend(b"definitely not deflate");
    h.upload("pipelines/brokenspec.json", "this is not json")
        .await;
    h.upload(
        "pipelines/azure.json",
        json!({"model": "azure/gpt-4o", "schema_name": "s", "schema": invoice_schema()})
            .to_string(),
    )
    .await;
    let cases: Vec<(&str, &str, Vec<u8>, &str)> =
        vec![
        (
            "an empty file",
            "inbox/empty.jsonl",
            Vec::new(),
            "empty (0 bytes)",
        ),
        (
            "only a header and blank lines",
            "inbox/header-only.jsonl",
            format!("{}\n\n  \n", header(ProviderKind::OpenAi, json!({}))).into_bytes(),
            "no request lines",
        ),
        (
            "a file that is not UTF-8 (UTF-16 with a byte order mark)",
            "inbox/utf16.jsonl",
            utf16,
            "UTF-16",
        ),
        (
            "a file that is not UTF-8 (UTF-16 without a byte order mark)",
            "inbox/utf16-nobom.jsonl",
            utf16_without_bom,
            "every other byte is zero",
        ),
        (
            "a file with classic Mac (CR-only) line ends",
            "inbox/cr-only.jsonl",
            with_spec(openai_spec(json!({}))).replace('\n', "\r").into_bytes(),
            "carriage return (CR) alone",
        ),
        (
            "a first line that is JSON null",
            "inbox/null-header.jsonl",
            format!("null\n{request}\n").into_bytes(),
            "line 1 is `null`, not a JSON object",
        ),
        (
            "a header whose spec is null",
            "inbox/null-spec.jsonl",
            format!("{{\"spec\": null}}\n{request}\n").into_bytes(),
            "the header is not a valid job spec",
        ),
        (
            "max_attempts of 0",
            "inbox/zero-attempts.jsonl",
            with_spec(openai_spec(json!({"max_attempts": 0}))).into_bytes(),
            "`max_attempts` is 0; allowed: 1 to 10",
        ),
        (
            "max_requests_per_part of 0",
            "inbox/zero-per-part.jsonl",
            with_spec(openai_spec(json!({"max_requests_per_part": 0}))).into_bytes(),
            "`max_requests_per_part` is 0; allowed: 1 to 50000",
        ),
        (
            "max_requests_per_part above the provider's limit",
            "inbox/big-parts.jsonl",
            with_spec(openai_spec(json!({"max_requests_per_part": 60_000}))).into_bytes(),
            "`max_requests_per_part` is 60000; allowed: 1 to 50000",
        ),
        (
            "max_line_bytes above the documented 64 MiB",
            "inbox/huge-lines.jsonl",
            with_spec(openai_spec(json!({"max_line_bytes": 100 * 1024 * 1024}))).into_bytes(),
            "`max_line_bytes` is 104857600; allowed: 1 to 67108864",
        ),
        (
            "max_tokens above the documented bound",
            "inbox/many-tokens.jsonl",
            with_spec(openai_spec(json!({"max_tokens": 300_000}))).into_bytes(),
            "`max_tokens` is 300000; allowed: 1 to 200000",
        ),
        (
            "a negative price",
            "inbox/negative-price.jsonl",
            with_spec(openai_spec(
                json!({"prices": {"input_per_million": -0.5, "output_per_million": 1.0}}),
            ))
            .into_bytes(),
            "`prices.input_per_million` is -0.5",
        ),
        (
            "no header and no pipeline spec",
            "inbox/no-header.jsonl",
            format!("{request}\n").into_bytes(),
            "no job spec",
        ),
        (
            "a header that is not JSON",
            "inbox/header-not-json.jsonl",
            format!("{{\"spec\": {{\"model\": \n{request}\n").into_bytes(),
            "line 1 is not JSON",
        ),
        (
            "a header naming an unknown provider",
            "inbox/unknown-provider.jsonl",
            with_spec(openai_spec(json!({"model": "azure/gpt-4o"}))).into_bytes(),
            "unknown provider",
        ),
        (
            "a header without a model",
            "inbox/no-model.jsonl",
            with_spec(json!({"schema_name": "s", "schema": invoice_schema()})).into_bytes(),
            "missing field `model`",
        ),
        (
            "a header with a misspelt field",
            "inbox/typo.jsonl",
            with_spec(openai_spec(json!({"max_token": 5}))).into_bytes(),
            "unknown field `max_token`",
        ),
        (
            "a pipeline spec that is not JSON",
            "inbox/brokenspec/a.jsonl",
            format!("{request}\n").into_bytes(),
            "pipelines/brokenspec.json: not a valid job spec",
        ),
        (
            "a pipeline spec naming an unknown provider",
            "inbox/azure/a.jsonl",
            format!("{request}\n").into_bytes(),
            "unknown provider",
        ),
        (
            "a schema that is not valid JSON Schema",
            "inbox/bad-schema.jsonl",
            with_spec(openai_spec(
                json!({"schema": {"type": "object", "properties": {"a": {"type": 5}}}}),
            ))
            .into_bytes(),
            "schema",
        ),
        (
            "a schema OpenAI cannot express (free-form map)",
            "inbox/free-form.jsonl",
            with_spec(openai_spec(
                json!({"schema": {"type": "object", "additionalProperties": {"type": "string"}}}),
            ))
            .into_bytes(),
            "cannot be used with openai",
        ),
        (
            "a schema name the provider refuses",
            "inbox/schema-name.jsonl",
            with_spec(openai_spec(json!({"schema_name": "my schema!"}))).into_bytes(),
            "my schema!",
        ),
        (
            "max_tokens of 0",
            "inbox/zero-tokens.jsonl",
            with_spec(openai_spec(json!({"max_tokens": 0}))).into_bytes(),
            "spec field `max_tokens` is 0; allowed: 1 to 200000",
        ),
        (
            "a temperature out of range",
            "inbox/hot.jsonl",
            with_spec(openai_spec(json!({"temperature": 7.5}))).into_bytes(),
            "spec field `temperature` is 7.5; allowed: 0 to 2",
        ),
        (
            "a gzip file without the .gz suffix",
            "inbox/packed.jsonl",
            gzip(with_spec(openai_spec(json!({}))).as_bytes()),
            "rename it to …packed.jsonl.gz",
        ),
        (
            "a .gz file that is not gzip data",
            "inbox/broken.jsonl.gz",
            broken_gzip,
            "line 1: the file cannot be decompressed",
        ),
    ];
    for (name, key, body, reason) in cases {
        let before = h.provider_batches(ProviderKind::OpenAi).await;
        let job = h.submit(key, body).await;
        let record_now = h.record(&job).await;
        assert_eq!(
            record_now.status,
            JobStatus::Failed,
            "{name}: {record_now:?}"
        );
        let failure = record_now.failure.clone().unwrap_or_default();
        assert!(
            failure.contains(key) && failure.contains(reason),
            "{name}: {failure}"
        );
        assert!(record_now.parts.is_empty(), "{name}");
        assert_eq!(
            h.provider_batches(ProviderKind::OpenAi).await,
            before,
            "{name}: nothing submitted"
        );
        let (_, summary) = h
            .ctx
            .store
            .get(&keys::summary(&job))
            .await
            .expect("summary");
        let summary: Value = serde_json::from_slice(&summary).expect("summary JSON");
        assert_eq!(
            summary["failure"],
            failure.as_str(),
            "{name}: the summary says why"
        );
        assert!(
            h.ctx
                .store
                .list(&keys::open_marker(&job))
                .await
                .expect("list")
                .is_empty(),
            "{name}"
        );
        record(Category::BadInput, name, Measured::default());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_outside_inbox_and_gone_objects_are_ignored_with_a_reason() {
    let h = Harness::start().await;
    let (body, _) = support::job_file(ProviderKind::OpenAi, 1, &[]);
    for key in [
        "uploads/job.jsonl",
        "results/x/successes/part-00000.jsonl",
        "inboxes/job.jsonl",
        "jobs/x/job.json",
    ] {
        let version = h.upload(key, body.clone()).await;
        let outcome = submit(
            &h.ctx,
            &UploadedObject {
                key: key.to_string(),
                version_id: Some(version),
            },
        )
        .await
        .expect("submit");
        assert!(
            matches!(&outcome, SubmitOutcome::Ignored { reason, .. } if reason.contains("inbox/")),
            "{key}: {outcome:?}"
        );
        record(
            Category::BadInput,
            &format!("an object outside inbox/ ({key})"),
            Measured::default(),
        );
    }
    let outcome = submit(
        &h.ctx,
        &UploadedObject {
            key: "inbox/never-uploaded.jsonl".into(),
            version_id: None,
        },
    )
    .await
    .expect("submit");
    assert!(
        matches!(&outcome, SubmitOutcome::Ignored { reason, .. } if reason.contains("no longer exists")),
        "{outcome:?}"
    );
    record(
        Category::BadInput,
        "an event for an object that is gone",
        Measured::default(),
    );
    assert_eq!(h.provider_batches(ProviderKind::OpenAi).await, 0);
}

/// Compressed uploads: `.jsonl.gz` is read transparently; a gzip cut short keeps the
/// lines before the cut and reports the rest as one error at the line where it broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_uploads_are_read_and_a_cut_one_reports_where_it_broke() {
    let h = Harness::start().await;
    for kind in ProviderKind::ALL {
        let (body, ids) = support::job_file(kind, 6, &[]);
        let job = h
            .submit(
                &format!("inbox/{kind}/packed.jsonl.gz"),
                gzip(body.as_bytes()),
            )
            .await;
        h.run_to_close(&job).await;
        let results = h
            .check_scenario(
                Category::BadInput,
                &format!("{kind}: a .jsonl.gz upload"),
                &job,
                &ids,
                BatchCount::default(),
            )
            .await;
        assert_eq!(results.successes.len(), 6, "{kind}");
    }
    let kind = ProviderKind::OpenAi;
    let (body, ids) = support::job_file(kind, 400, &[]);
    let packed = gzip(body.as_bytes());
    let cut = packed[..packed.len() * 2 / 3].to_vec();
    let key = "inbox/openai/cut.jsonl.gz";
    let job = h.submit(key, cut).await;
    let record_now = h.run_to_close(&job).await;
    // What was read is delivered, and the job says the file was not read to its end.
    assert_eq!(record_now.status, JobStatus::Failed);
    let failure = record_now.failure.clone().unwrap_or_default();
    assert!(
        failure.contains(key) && failure.contains("could not be read to its end"),
        "{failure}"
    );
    let read = record_now.requests;
    assert!(read > 1 && read < 401, "{read} lines read before the cut");
    // Lines 2..=read are requests (doc-0…) except the last, which is the cut.
    let mut expected: Vec<String> = ids[..(read - 1) as usize].to_vec();
    let cut_line = format!("line-{}", read + 1);
    expected.push(cut_line.clone());
    let results = h
        .check_scenario(
            Category::BadInput,
            "a .jsonl.gz cut short",
            &job,
            &expected,
            BatchCount::default(),
        )
        .await;
    let error = results
        .errors
        .iter()
        .find(|e| e["custom_id"] == cut_line.as_str())
        .expect("the cut is reported");
    let message = error["error_message"].as_str().unwrap_or_default();
    assert!(
        message.contains(key) && message.contains("decompressed"),
        "{message}"
    );
}

/// More requests than one batch may hold: split into parts, nothing rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_requests_than_a_batch_holds_are_split_not_rejected() {
    let h = Harness::start().await;
    for kind in ProviderKind::ALL {
        let (body, ids) = support::job_file(kind, 9, &[]);
        let body = body.replacen(
            "\"max_tokens\":256",
            "\"max_tokens\":256,\"max_requests_per_part\":2",
            1,
        );
        let before = h.provider_batches(kind).await;
        let job = h.submit(&format!("inbox/{kind}/many.jsonl"), body).await;
        let record_now = h.run_to_close(&job).await;
        assert_eq!(record_now.parts.len(), 5, "{kind}");
        let results = h
            .check_scenario(
                Category::BadInput,
                &format!("{kind}: more requests than one batch holds"),
                &job,
                &ids,
                BatchCount::exact(h.provider_batches(kind).await - before, 5),
            )
            .await;
        assert_eq!(results.successes.len(), 9, "{kind}");
    }
}

/// A model string without a provider in a header is refused with the accepted forms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_a_provider_prefix_names_the_accepted_forms() {
    let h = Harness::start().await;
    let spec = json!({"spec": {"model": "gpt-4o", "schema_name": "s", "schema": invoice_schema()}});
    let job = h
        .submit(
            "inbox/no-prefix.jsonl",
            format!("{spec}\n{{\"text\":\"x\"}}\n"),
        )
        .await;
    let failure = h.record(&job).await.failure.unwrap_or_default();
    assert!(
        failure.contains("openai/<model>") && failure.contains("no-prefix.jsonl"),
        "{failure}"
    );
    assert!(model_for(ProviderKind::OpenAi).starts_with("openai/"));
    record(
        Category::BadInput,
        "a model without a provider prefix",
        Measured::default(),
    );
}

/// Runs a command that reads `input` on stdin and returns its stdout.
fn pipe_through(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} (installed by `make test`): {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).expect("write stdin"));
    let out = child.wait_with_output().expect("run");
    writer.join().expect("writer");
    assert!(out.status.success(), "{program} {args:?} failed");
    out.stdout
}

/// Python's gzip module, as a user's script would write the file: `members` calls of
/// `gzip.open(path, "ab")`, each appending one member.
fn python_gzip(data: &[u8], members: usize) -> Vec<u8> {
    let script = "import gzip, io, sys\n\
                  data = sys.stdin.buffer.read(); n = int(sys.argv[1]); step = -(-len(data) // n)\n\
                  out = io.BytesIO()\n\
                  for i in range(n):\n    out.write(gzip.compress(data[i * step:(i + 1) * step]))\n\
                  sys.stdout.buffer.write(out.getvalue())\n";
    pipe_through("python3", &["-c", script, &members.to_string()], data)
}

/// Compressed uploads as users make them: Python's gzip module (one member and
/// several), the gzip binary, `cat a.gz b.gz`, pigz, an upper-case `.GZ` name. Each is
/// read to its last byte: every row is in the results and the summary records that
/// every byte of the object was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_uploads_from_everyday_tools_are_read_to_their_last_byte() {
    let h = Harness::start().await;
    let kind = ProviderKind::OpenAi;
    let (body, ids) = support::job_file(kind, 30, &[]);
    let lines: Vec<&str> = body.lines().collect();
    let (first, second) = lines.split_at(12);
    let cat = [
        pipe_through("gzip", &["-c"], (first.join("\n") + "\n").as_bytes()),
        pipe_through("gzip", &["-c"], (second.join("\n") + "\n").as_bytes()),
    ]
    .concat();
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "python gzip.compress",
            "py.jsonl.gz",
            python_gzip(body.as_bytes(), 1),
        ),
        (
            "python gzip, 3 appended members",
            "py3.jsonl.gz",
            python_gzip(body.as_bytes(), 3),
        ),
        (
            "the gzip binary",
            "bin.jsonl.gz",
            pipe_through("gzip", &["-9", "-c"], body.as_bytes()),
        ),
        ("cat a.gz b.gz", "cat.jsonl.gz", cat),
        (
            "pigz",
            "pigz.jsonl.gz",
            pipe_through("pigz", &["-c", "-b", "32"], body.as_bytes()),
        ),
        (
            "an upper-case .GZ name",
            "UPPER.JSONL.GZ",
            gzip(body.as_bytes()),
        ),
    ];
    for (name, file, packed) in cases {
        let key = format!("inbox/{kind}/{file}");
        let size = packed.len() as u64;
        let job = h.submit(&key, packed).await;
        let record_now = h.run_to_close(&job).await;
        assert_eq!(
            record_now.status,
            JobStatus::Completed,
            "{name}: {record_now:?}"
        );
        let results = h
            .check_scenario(
                Category::BadInput,
                &format!("a .jsonl.gz written by {name}"),
                &job,
                &ids,
                BatchCount::default(),
            )
            .await;
        assert_eq!(results.successes.len(), 30, "{name}");
        assert_eq!(
            results.summary["input"],
            json!({"object_bytes": size, "bytes_read": size, "complete": true}),
            "{name}"
        );
    }
}

/// Bytes after the end of the gzip data (a file appended to by mistake) are not
/// skipped silently: the job fails with a reason, after delivering what it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_after_the_compressed_data_fail_the_job_with_a_reason() {
    let h = Harness::start().await;
    let kind = ProviderKind::OpenAi;
    let (body, ids) = support::job_file(kind, 5, &[]);
    let packed = [gzip(body.as_bytes()), b"appended by mistake\n".to_vec()].concat();
    let key = "inbox/openai/appended.jsonl.gz";
    let job = h.submit(key, packed).await;
    let record_now = h.run_to_close(&job).await;
    assert_eq!(record_now.status, JobStatus::Failed, "{record_now:?}");
    let failure = record_now.failure.clone().unwrap_or_default();
    assert!(
        failure.contains(key) && failure.contains("could not be read to its end"),
        "{failure}"
    );
    let mut expected = ids.clone();
    expected.push("line-7".into());
    let results = h
        .check_scenario(
            Category::BadInput,
            "bytes after the end of the gzip data",
            &job,
            &expected,
            BatchCount::default(),
        )
        .await;
    assert_eq!(results.successes.len(), 5);
    assert_eq!(results.summary["input"]["complete"], json!(false));
    assert_eq!(results.summary["failure"], failure.as_str());
}

/// Generated ids (`line-N`) never collide with given ones, whatever the order:
/// a given id of that form is accepted only on its own line, and rejected lines
/// (bad, duplicate, reserved) are reported under their own line's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_ids_never_collide_with_given_ones() {
    let h = Harness::start().await;
    for kind in ProviderKind::ALL {
        let lines = [
            header(kind, json!({})),
            json!({"custom_id": "line-5", "text": "Invoice 2 from ACME, total 2.50 EUR"})
                .to_string(),
            json!({"text": "Invoice 3 from ACME, total 3.50 EUR"}).to_string(),
            json!({"custom_id": "line-3", "text": "Invoice 4 from ACME"}).to_string(),
            json!({"text": 5}).to_string(),
            json!({"custom_id": "line-6", "text": "Invoice 6 from ACME, total 6.50 EUR"})
                .to_string(),
            json!({"custom_id": "line-6", "text": "Invoice 7 from ACME"}).to_string(),
            json!({"custom_id": "line-9", "text": 8}).to_string(),
            json!({"text": "Invoice 9 from ACME, total 9.50 EUR"}).to_string(),
        ];
        let job = h
            .submit(&format!("inbox/{kind}/ids.jsonl"), lines.join("\n") + "\n")
            .await;
        h.run_to_close(&job).await;
        let expected: Vec<String> = (2..=9).map(|n| format!("line-{n}")).collect();
        let results = h
            .check_scenario(
                Category::BadInput,
                &format!("{kind}: given ids of the generated form, before and after"),
                &job,
                &expected,
                BatchCount::default(),
            )
            .await;
        let mut succeeded: Vec<&str> = results
            .successes
            .iter()
            .filter_map(|s| s["custom_id"].as_str())
            .collect();
        succeeded.sort_unstable();
        assert_eq!(succeeded, ["line-3", "line-6", "line-9"], "{kind}");
        let errors = results.error_types();
        let failed: Vec<&str> = errors.keys().map(String::as_str).collect();
        assert_eq!(
            failed,
            ["line-2", "line-4", "line-5", "line-7", "line-8"],
            "{kind}"
        );
    }
}

/// Notifications that are not uploads (folder markers, deletions, S3's test event,
/// anything else) are ignored with a reason: no job, no failure, no retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_that_are_not_uploads_are_ignored() {
    use batchline::pipeline::events::{SubmitResponse, handle_submit_payload};
    let h = Harness::start().await;
    let (body, _) = support::job_file(ProviderKind::OpenAi, 1, &[]);
    let version = h.upload("inbox/openai/gone.jsonl", body).await;
    let event = |key: &str, name: &str| {
        let mut event = serde_json::to_value(h.s3_event(key, &version)).expect("event");
        event["Records"][0]["eventName"] = json!(name);
        event
    };
    let cases = [
        (
            "a folder marker",
            event("inbox/openai/folder/", "ObjectCreated:Put"),
            "folder marker",
        ),
        (
            "a deletion",
            event("inbox/openai/gone.jsonl", "ObjectRemoved:Delete"),
            "not an upload",
        ),
        (
            "S3's test event",
            json!({"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-12-02T00:00:00Z",
                   "Bucket": support::BUCKET, "RequestId": "R", "HostId": "H"}),
            "test notification",
        ),
        (
            "an unrelated payload",
            json!({"hello": "world"}),
            "not an S3 notification",
        ),
    ];
    for (name, payload, reason) in cases {
        let response = handle_submit_payload(&h.ctx, payload).await.expect(name);
        let SubmitResponse::Uploads(outcomes) = response else {
            panic!("{name}: {response:?}");
        };
        assert!(
            matches!(outcomes.as_slice(), [SubmitOutcome::Ignored { reason: r, .. }] if r.contains(reason)),
            "{name}: {outcomes:?}"
        );
        record(
            Category::BadInput,
            &format!("an event that is not an upload: {name}"),
            Measured::default(),
        );
    }
    assert!(
        h.ctx.store.list("jobs/").await.expect("list").is_empty(),
        "no job was made"
    );
}
