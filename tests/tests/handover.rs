//! End-to-end: an upload read over many submit invocations, over moto. Each
//! invocation's time budget runs out after one row; it hands the rest over through the
//! submit queue (SQS), and the submit function's handler reads on from the checkpoint
//! with a ranged GET (a `.gz` upload is decompressed again up to there).

mod support;

use std::sync::Arc;
use std::time::Duration;

use batchline::model::ProviderKind;
use batchline::pipeline::events::{SubmitResponse, handle_submit_payload};
use batchline::pipeline::job::JobStatus;
use batchline::queue::SqsQueue;
use serde_json::{Value, json};
use support::{Harness, job_file_with};

/// Delivers the submit queue's messages to the submit handler as Lambda would, until
/// none is left; answers how many invocations ran.
async fn follow_handovers(h: &Harness, queue_url: &str) -> usize {
    let mut invocations = 0;
    loop {
        let received = h
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(1)
            .send()
            .await
            .expect("receive");
        let Some(message) = received.messages().first() else {
            return invocations;
        };
        invocations += 1;
        assert!(invocations < 100, "the upload never ended");
        let event = json!({"Records": [{
            "messageId": message.message_id(), "receiptHandle": message.receipt_handle(),
            "body": message.body(), "attributes": {}, "messageAttributes": {},
            "md5OfBody": "", "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:batchline-submit",
            "awsRegion": "us-east-1"
        }]});
        let response = handle_submit_payload(&h.ctx, event).await.expect("submit");
        let SubmitResponse::Handovers(failed) = response else {
            panic!("{response:?}");
        };
        assert!(failed.batch_item_failures.is_empty(), "{failed:?}");
        h.sqs
            .delete_message()
            .queue_url(queue_url)
            .receipt_handle(message.receipt_handle().unwrap_or_default())
            .send()
            .await
            .expect("delete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_read_over_many_invocations_through_the_submit_queue() {
    for compressed in [false, true] {
        let mut h = Harness::start().await;
        let queue_url = h
            .sqs
            .create_queue()
            .queue_name("batchline-submit")
            .send()
            .await
            .expect("queue")
            .queue_url()
            .expect("url")
            .to_string();
        h.ctx.submit_queue = Some(Arc::new(SqsQueue::new(h.sqs.clone(), queue_url.clone())));
        h.ctx.settings.submit_budget = Duration::ZERO;
        let kind = ProviderKind::OpenAi;
        let bad = "not json".to_string();
        let (body, mut ids) = job_file_with(kind, json!({"max_requests_per_part": 2}), 6, &[bad]);
        ids.push("line-8".into());
        let (key, body) = match compressed {
            false => ("inbox/long.jsonl", body.into_bytes()),
            true => {
                use std::io::Write;
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(body.as_bytes()).expect("gzip");
                ("inbox/long.jsonl.gz", gz.finish().expect("gzip"))
            }
        };
        let job = h.submit(key, body).await;
        let invocations = 1 + follow_handovers(&h, &queue_url).await;
        assert!(invocations >= 5, "{invocations} invocations");
        let record = h.record(&job).await;
        assert_eq!(record.status, JobStatus::Open, "{:?}", record.failure);
        assert!(record.input.expect("input").complete, "{:?}", record.input);
        assert_eq!(record.handovers as usize, invocations - 1);
        let record = h.run_to_end(&job).await;
        assert_eq!(record.status, JobStatus::Completed);
        let results = h.assert_invariant(&job, &ids).await;
        assert_eq!(results.successes.len(), 6);
        assert_eq!(results.error_types()["line-8"], "invalid_input");
        // One batch per part: nothing was submitted twice.
        assert_eq!(h.batches_created(kind).await, record.parts.len());
        let files: Vec<Value> = results.summary["files"]["errors"]
            .as_array()
            .expect("files")
            .clone();
        assert!(
            files
                .iter()
                .any(|f| f.as_str().unwrap().contains("errors/input")),
            "{files:?}"
        );
    }
}
