//! End-to-end: named pipelines over moto and the emulator. `skip_succeeded` against
//! the DynamoDB ledger (moto), and the re-run of a finished job's failed rows.

mod support;

use batchline::model::ProviderKind;
use batchline::pipeline::job::JobStatus;
use serde_json::{Value, json};
use support::{Harness, job_file_with};

/// The ids of `rows`, sorted.
fn ids_of(rows: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = rows
        .iter()
        .map(|r| r["custom_id"].as_str().expect("custom_id").to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_of_a_pipeline_skip_rows_that_already_succeeded() {
    let h = Harness::start().await;
    let kind = ProviderKind::Anthropic;
    let skip = json!({"skip_succeeded": true, "max_attempts": 1});
    // Monday: four rows and one the provider rate-limits for good.
    let limited =
        json!({"custom_id": "limited", "text": "Invoice [[fault:rate_limit]]"}).to_string();
    let (body, mut monday_ids) =
        job_file_with(kind, skip.clone(), 4, std::slice::from_ref(&limited));
    monday_ids.push("limited".into());
    let monday = h.submit("inbox/invoices/monday.jsonl", body).await;
    // Tuesday is uploaded while Monday runs: nothing has succeeded yet, so it skips
    // nothing and sends every row again.
    let (body, tuesday_ids) = job_file_with(kind, skip.clone(), 2, &[]);
    let tuesday = h.submit("inbox/invoices/tuesday.jsonl", body).await;
    for (job, ids) in [(&monday, &monday_ids), (&tuesday, &tuesday_ids)] {
        assert_eq!(h.run_to_end(job).await.status, JobStatus::Completed);
        assert!(h.assert_invariant(job, ids).await.skipped.is_empty());
    }

    // Wednesday: doc-0…doc-5 plus the rate-limited row. doc-0…doc-3 have a success
    // (doc-0 and doc-1 in two jobs); the rate-limited row failed; doc-4 and doc-5 are new.
    let (body, mut ids) = job_file_with(kind, skip, 6, &[limited]);
    ids.push("limited".into());
    let wednesday = h.submit("inbox/invoices/wednesday.jsonl", body).await;
    let record = h.run_to_end(&wednesday).await;
    assert_eq!(record.skipped, 4);
    let results = h.assert_invariant(&wednesday, &ids).await;
    assert_eq!(
        ids_of(&results.skipped),
        ["doc-0", "doc-1", "doc-2", "doc-3"]
    );
    for row in &results.skipped {
        let holder = row["answer_job"].as_str().expect("answer_job");
        assert!([&monday, &tuesday].contains(&&holder.to_string()), "{row}");
        let held = h
            .assert_invariant(
                holder,
                if holder == monday {
                    &monday_ids
                } else {
                    &tuesday_ids
                },
            )
            .await;
        assert!(ids_of(&held.successes).contains(&row["custom_id"].as_str().unwrap().to_string()));
    }
    assert_eq!(ids_of(&results.successes), ["doc-4", "doc-5"]);
    assert_eq!(results.error_types()["limited"], "rate_limit_error");
    // Only the three rows without a success reached the provider.
    assert_eq!(record.parts.iter().map(|p| p.requests).sum::<u64>(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_upload_resends_exactly_the_failed_rows_of_a_job() {
    let h = Harness::start().await;
    let kind = ProviderKind::OpenAi;
    let extra = [
        json!({"custom_id": "limited", "text": "Invoice [[fault:rate_limit]]"}).to_string(),
        "not json".to_string(),
    ];
    let (body, mut ids) = job_file_with(kind, json!({"max_attempts": 1}), 3, &extra);
    ids.extend(["limited".to_string(), "line-6".to_string()]);
    let first = h.submit("inbox/invoices/thursday.jsonl", body).await;
    h.run_to_end(&first).await;
    let failed = h.assert_invariant(&first, &ids).await.error_types();
    assert_eq!(failed.len(), 2, "{failed:?}");

    let rerun = h
        .submit(
            "inbox/reruns/thursday.json",
            json!({"rerun_failed": first}).to_string(),
        )
        .await;
    let record = h.run_to_end(&rerun).await;
    assert_eq!(record.status, JobStatus::Completed, "{:?}", record.failure);
    assert_eq!(record.requests, 2);
    let rerun_ids: Vec<String> = failed.keys().cloned().collect();
    let results = h.assert_invariant(&rerun, &rerun_ids).await;
    assert_eq!(results.summary["rerun_of"]["job_id"], json!(first));
    // The same rows fail the same way, under the same ids, naming the file they are in.
    assert_eq!(results.error_types(), failed);
    let bad = results
        .errors
        .iter()
        .find(|e| e["custom_id"] == "line-6")
        .expect("the bad line");
    assert!(
        bad["error_message"]
            .as_str()
            .unwrap()
            .starts_with("inbox/invoices/thursday.jsonl line 6"),
        "{bad}"
    );
}
