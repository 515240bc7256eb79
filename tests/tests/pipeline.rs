//! End-to-end: the pipeline steps, through the real AWS SDK against moto and the
//! provider emulator, for every provider. Each test asserts the invariant on the
//! files in S3.

mod support;

use batchline::model::ProviderKind;
use batchline::pipeline::job::JobStatus;
use serde_json::json;
use support::{Harness, job_file, job_file_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_job_succeeds_for_every_provider() {
    let h = Harness::start().await;
    for kind in ProviderKind::ALL {
        let (body, ids) = job_file(kind, 12, &[]);
        let prices =
            r#""max_tokens":256,"prices":{"input_per_million":1.0,"output_per_million":2.0}"#;
        let body = body.replacen("\"max_tokens\":256", prices, 1);
        let job = h
            .submit(&format!("inbox/{kind}/Invoices été {kind}.jsonl"), body)
            .await;
        let record = h.run_to_end(&job).await;
        assert_eq!(
            record.status,
            JobStatus::Completed,
            "{kind}: {:?}",
            record.failure
        );
        let results = h.assert_invariant(&job, &ids).await;
        assert_eq!(results.successes.len(), 12, "{kind}: {:?}", results.errors);
        let usage = &results.summary["usage"];
        let (input, output) = (
            usage["input_tokens"].as_f64().unwrap_or(0.0),
            usage["output_tokens"].as_f64().unwrap_or(0.0),
        );
        assert!(output > 0.0, "{kind}");
        let cost = results.summary["cost_usd"]
            .as_f64()
            .expect("cost from the spec's prices");
        assert!(
            (cost - (input + 2.0 * output) / 1e6).abs() < 1e-12,
            "{kind}: {cost}"
        );
        for success in &results.successes {
            assert!(success["result"]["vendor"].is_string(), "{kind}: {success}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lines_and_schema_breaking_answers_become_errors() {
    let h = Harness::start().await;
    for kind in ProviderKind::ALL {
        let extra = [
            "this is not json".to_string(),
            json!({"custom_id": "no-content"}).to_string(),
            json!({"custom_id": "broken", "text": "Invoice [[fault:schema_break]]"}).to_string(),
            json!({"custom_id": "refused", "text": "Invoice [[fault:refusal]]"}).to_string(),
            json!({"text": "an id from the line number"}).to_string(),
        ];
        let (body, mut ids) = job_file(kind, 4, &extra);
        ids.extend(["line-6", "no-content", "broken", "refused", "line-10"].map(String::from));
        let key = format!("inbox/{kind}/bad.jsonl");
        let job = h.submit(&key, body).await;
        h.run_to_end(&job).await;
        let results = h.assert_invariant(&job, &ids).await;
        let types = results.error_types();
        assert_eq!(types["line-6"], "invalid_input", "{kind}");
        assert_eq!(types["no-content"], "invalid_input", "{kind}");
        assert_eq!(types["broken"], "schema_mismatch", "{kind}");
        assert_eq!(types["refused"], "refusal", "{kind}");
        let bad = results
            .errors
            .iter()
            .find(|e| e["custom_id"] == "line-6")
            .expect("line 6");
        let message = bad["error_message"].as_str().expect("message");
        assert!(
            message.contains(&key) && message.contains("line 6"),
            "{message}"
        );
        assert_eq!(results.successes.len(), 5, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_s3_event_creates_no_second_batch() {
    let h = Harness::start().await;
    for kind in ProviderKind::ALL {
        let (body, ids) = job_file(kind, 3, &[]);
        let key = format!("inbox/{kind}/dup.jsonl");
        let version = h.upload(&key, body).await;
        let before = h.batches_created(kind).await;
        let job = h.submit_version(&key, &version).await;
        let again = h.submit_version(&key, &version).await;
        assert_eq!(job, again);
        assert_eq!(h.batches_created(kind).await, before + 1, "{kind}");
        h.run_to_end(&job).await;
        h.assert_invariant(&job, &ids).await;
        // The same event after the job closed is still no new batch.
        h.submit_version(&key, &version).await;
        assert_eq!(h.batches_created(kind).await, before + 1, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_of_the_same_key_is_a_new_job() {
    let h = Harness::start().await;
    let kind = ProviderKind::OpenAi;
    let key = "inbox/openai/same-key.jsonl";
    let (first_body, ids) = job_file(kind, 2, &[]);
    let first = h.submit(key, first_body).await;
    let (second_body, _) = job_file(kind, 2, &[]);
    let second = h.submit(key, second_body).await;
    assert_ne!(first, second);
    for job in [first, second] {
        h.run_to_end(&job).await;
        h.assert_invariant(&job, &ids).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_changes_nothing() {
    let h = Harness::start().await;
    for kind in ProviderKind::ALL {
        let (body, ids) = job_file(kind, 5, &[]);
        let job = h
            .submit(&format!("inbox/{kind}/redeliver.jsonl"), body)
            .await;
        h.run_to_end(&job).await;
        let before = h.assert_invariant(&job, &ids).await;
        let message = json!({"job_id": job, "part": 0}).to_string();
        h.sqs
            .send_message()
            .queue_url(&h.queue_url)
            .message_body(&message)
            .send()
            .await
            .expect("send");
        h.sqs
            .send_message()
            .queue_url(&h.queue_url)
            .message_body(&message)
            .send()
            .await
            .expect("send");
        assert_eq!(h.collect_queued().await, 2);
        let after = h.assert_invariant(&job, &ids).await;
        assert_eq!(before.successes, after.successes, "{kind}");
        assert_eq!(before.summary, after.summary, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_polls_at_once_queue_each_part_once() {
    let h = Harness::start().await;
    for kind in ProviderKind::ALL {
        let (body, ids) = job_file(kind, 6, &[]);
        let job = h.submit(&format!("inbox/{kind}/polls.jsonl"), body).await;
        h.emulator.finish_all(true);
        let (a, b) = tokio::join!(
            batchline::pipeline::poll(&h.ctx),
            batchline::pipeline::poll(&h.ctx)
        );
        let queued = a.expect("poll a").parts_queued + b.expect("poll b").parts_queued;
        assert_eq!(queued, 1, "{kind}: exactly one poll queues the part");
        h.run_to_end(&job).await;
        h.assert_invariant(&job, &ids).await;
        h.emulator.finish_all(false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_over_the_part_limit_is_split_and_reassembled() {
    let h = Harness::start().await;
    for kind in ProviderKind::ALL {
        let (body, ids) = job_file(kind, 10, &[]);
        let body = body.replacen(
            "\"max_tokens\":256",
            "\"max_tokens\":256,\"max_requests_per_part\":4",
            1,
        );
        let job = h.submit(&format!("inbox/{kind}/split.jsonl"), body).await;
        let record = h.run_to_end(&job).await;
        assert_eq!(record.parts.len(), 3, "{kind}: 10 requests at 4 a part");
        assert!(
            record.parts[0]
                .split_reason
                .as_deref()
                .is_some_and(|r| r.contains('4')),
            "{kind}: {:?}",
            record.parts[0]
        );
        let results = h.assert_invariant(&job, &ids).await;
        assert_eq!(results.successes.len(), 10, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_batch_keeps_its_partial_results_and_reports_the_rest() {
    let h = Harness::start().await;
    for kind in ProviderKind::ALL {
        h.emulator.set_faults(batchline_emulator::FaultPlan {
            batch_fate: batchline_emulator::BatchFate::Expire,
            partial: 0.5,
            ..Default::default()
        });
        let (body, ids) = job_file(kind, 8, &[]);
        let job = h.submit(&format!("inbox/{kind}/expire.jsonl"), body).await;
        h.run_to_end(&job).await;
        let results = h.assert_invariant(&job, &ids).await;
        assert!(
            !results.successes.is_empty(),
            "{kind}: partial results kept"
        );
        assert!(!results.errors.is_empty(), "{kind}: the rest reported");
        assert!(
            results.errors.iter().all(|e| e["error_type"] == "expired"),
            "{kind}: {:?}",
            results.errors
        );
        h.emulator.set_faults(Default::default());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_file_problems_fail_the_job_with_a_reason_and_submit_nothing() {
    let h = Harness::start().await;
    let cases = [
        ("inbox/empty.jsonl", String::new(), "empty"),
        (
            "inbox/nospec.jsonl",
            json!({"text": "x"}).to_string(),
            "no job spec",
        ),
        (
            "inbox/badspec.jsonl",
            "{\"spec\": {\"model\": \"nope/x\"}}\n".to_string(),
            "header",
        ),
        (
            "inbox/openai/no-pipeline.jsonl",
            json!({"text": "x"}).to_string(),
            "pipelines/openai.json",
        ),
    ];
    for (key, body, reason) in cases {
        let job = h.submit(key, body).await;
        let record = h.record(&job).await;
        assert_eq!(record.status, JobStatus::Failed, "{key}");
        let failure = record.failure.unwrap_or_default();
        assert!(
            failure.contains(reason) && failure.contains(key.rsplit('/').next().unwrap_or(key)),
            "{key}: {failure}"
        );
        assert!(record.parts.is_empty());
    }
    assert_eq!(h.batches_created(ProviderKind::OpenAi).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_pipeline_spec_applies_to_uploads_under_its_prefix() {
    let h = Harness::start().await;
    let spec: serde_json::Value =
        serde_json::from_str(&support::header(ProviderKind::Anthropic, json!({}))).expect("header");
    h.upload("pipelines/claims.json", spec["spec"].to_string())
        .await;
    let body = (0..3)
        .map(|i| json!({"custom_id": format!("c{i}"), "text": "claim"}).to_string())
        .collect::<Vec<_>>()
        .join("\n");
    let job = h.submit("inbox/claims/2026/batch one.jsonl", body).await;
    h.run_to_end(&job).await;
    let ids: Vec<String> = (0..3).map(|i| format!("c{i}")).collect();
    let results = h.assert_invariant(&job, &ids).await;
    assert_eq!(results.successes.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzipped_csv_under_a_pipeline_carries_its_kept_column_to_the_results() {
    let h = Harness::start().await;
    let spec = json!({
        "model": support::model_for(ProviderKind::OpenAi),
        "schema_name": "price",
        "schema": {"type": "object", "properties": {"total": {"type": "number"}},
                   "required": ["total"], "additionalProperties": false},
        "id_column": "sku",
        "template": "Title: {title}\n\n{body}",
        "keep": ["region"],
    });
    h.upload("pipelines/shop.json", spec.to_string()).await;
    // A quoted comma, a quoted CRLF, doubled quotes, then a row one field short.
    let csv = "\u{feff}sku,title,body,region\r\n\
               A-1,Lamp,\"Bright, warm: 12.50\",EU\r\n\
               A-2,Chair,\"Four legs\r\nand a back: 40\",US\r\n\
               A-3,\"Desk \"\"XL\"\"\",Big: 7,EU\r\n\
               A-4,Shelf,no region\r\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, csv.as_bytes()).expect("gzip");
    let key = "inbox/shop/Products.CSV.GZ";
    let job = h.submit(key, gz.finish().expect("gzip")).await;
    let record = h.run_to_end(&job).await;
    assert_eq!(record.status, JobStatus::Completed, "{:?}", record.failure);
    let ids: Vec<String> = ["A-1", "A-2", "A-3", "line-6"].map(String::from).to_vec();
    let results = h.assert_invariant(&job, &ids).await;
    assert_eq!(results.successes.len(), 3, "{:?}", results.errors);
    for (id, total, region) in [("A-1", 12.5, "EU"), ("A-2", 40.0, "US"), ("A-3", 7.0, "EU")] {
        let success = results
            .successes
            .iter()
            .find(|s| s["custom_id"] == id)
            .expect("success");
        let fields: Vec<&String> = success.as_object().expect("object").keys().collect();
        assert_eq!(fields[..3], ["custom_id", "region", "result"], "{success}");
        assert_eq!(success["region"], region, "{success}");
        // The emulator answers with a number from the text the template built.
        assert_eq!(success["result"]["total"], total, "{success}");
    }
    let ragged = &results.errors[0];
    assert_eq!(
        (&ragged["error_type"], &ragged["line"]),
        (&json!("invalid_input"), &json!(6))
    );
    let message = ragged["error_message"].as_str().expect("message");
    assert!(
        message.starts_with(&format!(
            "{key} line 6: the row has 3 fields and the header 4"
        )),
        "{message}"
    );
    let kept = h
        .get_json_lines(&batchline::pipeline::job::keys::part_kept(&job, 0))
        .await;
    assert_eq!(kept.len(), 3);
}

/// Each S3 request's signed payload hash and the CRC32 it carried ("none" without one).
#[derive(Debug, Clone, Default)]
struct BodyHeaders(std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>);

impl aws_sdk_s3::config::Intercept for BodyHeaders {
    fn name(&self) -> &'static str {
        "BodyHeaders"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_s3::config::RuntimeComponents,
        _: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let headers = context.request().headers();
        if let Some(hash) = headers.get("x-amz-content-sha256") {
            let checksum = headers.get("x-amz-checksum-crc32").unwrap_or("none");
            let mut seen = self.0.lock().expect("not poisoned");
            seen.push((hash.to_string(), checksum.to_string()));
        }
        Ok(())
    }
}

/// Uploads skip SigV4 payload signing, which would hash every byte of the results once
/// more; the CRC32 the SDK sends instead still lets S3 reject a damaged body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_carry_a_checksum_in_place_of_a_payload_signature() {
    use batchline::storage::{ObjectStore, PutMode, S3Store};

    let h = Harness::start().await;
    let seen = BodyHeaders::default();
    let config = aws_sdk_s3::config::Builder::from(&batchline_emulator::harness::moto_sdk_config(
        &h.moto.url,
    ))
    .force_path_style(true)
    .interceptor(seen.clone())
    .build();
    let store = S3Store::new(aws_sdk_s3::Client::from_conf(config), support::BUCKET);
    store
        .put(
            "checks/single.jsonl",
            "{\"a\":1}\n".into(),
            PutMode::Overwrite,
        )
        .await
        .expect("put");
    let upload = store
        .start_upload("checks/multi.jsonl")
        .await
        .expect("start");
    let etag = store
        .upload_part("checks/multi.jsonl", &upload, 1, "{\"b\":2}\n".into())
        .await
        .expect("part");
    store
        .complete_upload("checks/multi.jsonl", &upload, vec![(1, etag)])
        .await
        .expect("complete");

    let seen = seen.0.lock().expect("not poisoned").clone();
    let unsigned: Vec<&str> = seen
        .iter()
        .filter(|(hash, _)| hash == "UNSIGNED-PAYLOAD")
        .map(|(_, crc32)| crc32.as_str())
        .collect();
    // The bodies' CRC-32s, base64 (Python: zlib.crc32), in the order they were sent.
    assert_eq!(unsigned, ["dOijRg==", "8DpvsQ=="], "{seen:?}");
    assert_eq!(
        h.get_json_lines("checks/multi.jsonl").await,
        vec![json!({"b": 2})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_rows_are_answered_and_split_back_on_every_provider() {
    let h = Harness::start().await;
    for kind in ProviderKind::ALL {
        let spec = json!({"rows_per_request": 5, "max_tokens": 2048});
        let (body, ids) = support::job_file_with(kind, spec, 12, &[]);
        let job = h.submit(&format!("inbox/{kind}/packed.jsonl"), body).await;
        let record = h.run_to_end(&job).await;
        assert_eq!(
            record.status,
            JobStatus::Completed,
            "{kind}: {:?}",
            record.failure
        );
        let results = h.assert_invariant(&job, &ids).await;
        assert_eq!(results.successes.len(), 12, "{kind}: {:?}", results.errors);
        assert_eq!(results.summary["requests"], 12, "{kind}");
        assert_eq!(results.summary["llm_requests"], 3, "{kind}");
        for success in &results.successes {
            assert!(success["result"]["vendor"].is_string(), "{kind}: {success}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_requests_cut_off_by_the_token_limit_are_split_until_rows_fit() {
    let h = Harness::start().await;
    for kind in ProviderKind::ALL {
        // One answer (about 30 tokens) fits 45 tokens, two do not: the emulator cuts
        // them off, and collect resubmits the rows in halves down to one row each,
        // although max_attempts allows no retry.
        let spec = json!({"rows_per_request": 8, "max_tokens": 45, "max_attempts": 1});
        let (body, ids) = support::job_file_with(kind, spec, 8, &[]);
        let job = h
            .submit(&format!("inbox/{kind}/too-long.jsonl"), body)
            .await;
        h.run_to_end(&job).await;
        let results = h.assert_invariant(&job, &ids).await;
        assert_eq!(results.successes.len(), 8, "{kind}: {:?}", results.errors);
        // 1 request of 8 rows, 2 of 4, 4 of 2, 8 of 1.
        assert_eq!(
            results.summary["llm_requests"], 15,
            "{kind}: {}",
            results.summary
        );
        assert_eq!(
            results.summary["retried"], 24,
            "{kind}: {}",
            results.summary
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_prompt_tokens_are_reported_and_priced_on_every_provider() {
    let h = Harness::start().await;
    // Long enough for every model's minimum cacheable prefix (4,096 tokens at most).
    let rules: String = (1..=600)
        .map(|n| format!("Rule {n}: amounts are written with two decimals. "))
        .collect();
    // Bedrock's Converse records carry no cache points yet: nothing is cached there.
    let caching = ProviderKind::ALL
        .into_iter()
        .filter(|k| *k != ProviderKind::Bedrock);
    for kind in caching {
        let spec = json!({
            "system_prompt": rules,
            "prices": {"input_per_million": 1.0, "output_per_million": 2.0,
                       "cache_read_per_million": 0.1, "cache_write_per_million": 2.0}
        });
        let (body, ids) = support::job_file_with(kind, spec, 40, &[]);
        let job = h.submit(&format!("inbox/{kind}/cached.jsonl"), body).await;
        h.run_to_end(&job).await;
        let results = h.assert_invariant(&job, &ids).await;
        let usage = &results.summary["usage"];
        let count = |field: &str| usage[field].as_f64().unwrap_or(0.0);
        let (input, output) = (count("input_tokens"), count("output_tokens"));
        let (read, written) = (
            count("cached_input_tokens"),
            count("cache_write_input_tokens"),
        );
        // Requests after the first wave of 16 find the prefix the first wave wrote.
        assert!(read > 0.0, "{kind}: {usage}");
        assert!(read < input, "{kind}: {usage}");
        assert_eq!(
            written > 0.0,
            kind == ProviderKind::Anthropic,
            "{kind}: {usage}"
        );
        let expected = ((input - read - written) + 0.1 * read + 2.0 * written + 2.0 * output) / 1e6;
        let cost = results.summary["cost_usd"].as_f64().expect("a cost");
        assert!(
            (cost - expected).abs() < 1e-9,
            "{kind}: {cost} vs {expected}"
        );
        let cached_rows = results
            .successes
            .iter()
            .filter(|s| s["usage"]["cached_input_tokens"].as_u64().unwrap_or(0) > 0)
            .count();
        assert!(
            cached_rows > 0,
            "{kind}: per-result usage reports cached tokens"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_text_and_json_answers_on_every_provider() {
    let h = Harness::start().await;
    for kind in ProviderKind::ALL {
        for output in ["text", "json"] {
            let (body, ids) = job_file(kind, 3, &[]);
            let mut lines: Vec<String> = body.lines().map(str::to_string).collect();
            let mut header: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
            let spec = header["spec"].as_object_mut().unwrap();
            spec.remove("schema");
            spec.remove("schema_name");
            spec.insert("output".into(), json!(output));
            lines[0] = header.to_string();
            let job = h
                .submit(
                    &format!("inbox/{kind}/{output}.jsonl"),
                    lines.join("\n") + "\n",
                )
                .await;
            h.run_to_end(&job).await;
            let results = h.assert_invariant(&job, &ids).await;
            assert_eq!(
                results.successes.len(),
                3,
                "{kind} {output}: {:?}",
                results.errors
            );
            for success in &results.successes {
                match output {
                    "text" => assert!(
                        success["text"].as_str().is_some_and(|t| !t.is_empty())
                            && success.get("result").is_none(),
                        "{kind}: {success}"
                    ),
                    _ => assert!(success["result"].is_object(), "{kind}: {success}"),
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_model_leaves_out_repeats_or_invents_are_never_misattributed() {
    let h = Harness::start().await;
    for kind in ProviderKind::ALL {
        // One request of four rows: row 2 is left out, row 3 answered twice, and a
        // fifth row invented; rows 1 and 4 keep their own answers.
        let spec = json!({"rows_per_request": 4, "max_tokens": 2048, "max_attempts": 1});
        let faults = [
            "",
            "[[fault:drop_row]]",
            "[[fault:repeat_row]]",
            "[[fault:invent_row]]",
        ];
        let mut lines = vec![support::header(kind, spec)];
        let ids: Vec<String> = (0..4).map(|i| format!("doc-{i}")).collect();
        lines.extend(ids.iter().zip(faults).enumerate().map(|(i, (id, fault))| {
            json!({"custom_id": id, "text": format!("Invoice {i} from Vendor{i} Limited {fault}")})
                .to_string()
        }));
        let job = h
            .submit(
                &format!("inbox/{kind}/misattributed.jsonl"),
                lines.join("\n") + "\n",
            )
            .await;
        h.run_to_end(&job).await;
        let results = h.assert_invariant(&job, &ids).await;
        let types = results.error_types();
        assert_eq!(
            types.get("doc-1").map(String::as_str),
            Some("missing_row"),
            "{kind}: {types:?}"
        );
        assert_eq!(
            types.get("doc-2").map(String::as_str),
            Some("repeated_row"),
            "{kind}: {types:?}"
        );
        assert_eq!(results.successes.len(), 2, "{kind}: {:?}", results.errors);
        for success in &results.successes {
            let own = if success["custom_id"] == "doc-0" {
                "Vendor0"
            } else {
                "Vendor3"
            };
            let answer = success["result"].to_string();
            assert!(
                !["Vendor1", "Vendor2"]
                    .iter()
                    .any(|other| answer.contains(other)),
                "{kind}: {success} holds another row's words"
            );
            assert!(
                answer.contains(own) || !answer.contains("Vendor"),
                "{kind}: {success}"
            );
        }
    }
}

/// A job for a model OpenAI does not serve: every row fails with `model_not_found`
/// (one error line per request), and the summary says so in one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_fails_every_row_and_the_summary_names_the_cause() {
    let h = Harness::start().await;
    let kind = ProviderKind::OpenAi;
    let (body, ids) = job_file_with(kind, json!({"model": "openai/gpt-3"}), 6, &[]);
    let job = h.submit("inbox/openai/unknown-model.jsonl", body).await;
    let record = h.run_to_end(&job).await;
    assert_eq!(record.status, JobStatus::Completed, "{:?}", record.failure);
    let results = h.assert_invariant(&job, &ids).await;
    assert!(results.successes.is_empty());
    assert!(
        results
            .error_types()
            .values()
            .all(|t| t == "model_not_found"),
        "{:?}",
        results.error_types()
    );
    assert_eq!(
        results.summary["cause"],
        "6 of 6 rows failed: model_not_found: HTTP 404: The model `gpt-3` does not exist or you do not have access to it.",
        "{}",
        results.summary
    );
    assert_eq!(results.summary["top_errors"][0]["rows"], 6);
}

/// Bedrock's default record minimum on both sides: a job under it fails before anything
/// is paid for, with a reason that names the minimum; a larger one is split so that no
/// part falls under it, and every row comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_jobs_meet_its_record_minimum() {
    let mut h = Harness::start().await;
    h.ctx.settings.bedrock_min_records = 100;
    h.emulator
        .set_bedrock(batchline_emulator::BedrockConfig::default());
    let kind = ProviderKind::Bedrock;

    let (body, ids) = job_file(kind, 12, &[]);
    let job = h.submit("inbox/bedrock/small.jsonl", body).await;
    let record = h.record(&job).await;
    assert_eq!(record.status, JobStatus::Failed);
    let reason = record.failure.expect("a reason");
    assert!(
        reason.contains("at least 100 requests") && reason.contains("has 12"),
        "{reason}"
    );
    assert!(record.parts.is_empty());
    assert_eq!(h.provider_batches(kind).await, 0, "nothing was submitted");
    // Every row still has its record, an error naming its line and the minimum.
    let results = h.assert_invariant(&job, &ids).await;
    assert_eq!(results.errors.len(), 12);
    for error in &results.errors {
        let message = error["error_message"].as_str().unwrap_or_default();
        assert!(
            message.contains("small.jsonl line ") && message.contains("at least 100"),
            "{error}"
        );
    }

    // 260 rows at 150 a part: 150 + 110 would do, but never 150 + 100 + 10.
    let (body, ids) = job_file_with(kind, json!({"max_requests_per_part": 150}), 260, &[]);
    let job = h.submit("inbox/bedrock/large.jsonl", body).await;
    let record = h.run_to_end(&job).await;
    assert_eq!(record.status, JobStatus::Completed, "{:?}", record.failure);
    let results = h.assert_invariant(&job, &ids).await;
    assert_eq!(results.successes.len(), 260, "{:?}", results.error_types());
    let sizes: Vec<u64> = record.parts.iter().map(|p| p.requests).collect();
    assert_eq!(sizes, [150, 110]);

    // A part limit under the minimum is refused by name.
    let (body, _) = job_file_with(kind, json!({"max_requests_per_part": 50}), 120, &[]);
    let job = h.submit("inbox/bedrock/tiny-parts.jsonl", body).await;
    let reason = h.record(&job).await.failure.expect("a reason");
    assert!(reason.contains("max_requests_per_part"), "{reason}");
    assert!(reason.contains("100 to 50000"), "{reason}");
}
