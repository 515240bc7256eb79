//! The SQS queue (also speaks to moto in tests through `AWS_ENDPOINT_URL`).

use async_trait::async_trait;
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use super::port::{Queue, QueueError};

/// The most messages one `SendMessageBatch` call takes.
const BATCH_ENTRIES: usize = 10;

/// Sends each message to one SQS queue.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    /// The queue at `url`, reached through `client`.
    pub fn new(client: aws_sdk_sqs::Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
        }
    }

    /// One `SendMessageBatch` call for at most ten bodies; answers the bodies SQS
    /// did not take, each with its reason.
    async fn send_group(&self, bodies: Vec<String>) -> Result<Vec<(String, String)>, QueueError> {
        let entries = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .build()
                    .map_err(|e| QueueError(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = self
            .client
            .send_message_batch()
            .queue_url(&self.url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(output
            .failed()
            .iter()
            .filter_map(|failed| {
                let body = bodies.get(failed.id().parse::<usize>().ok()?)?;
                let reason = format!(
                    "{} ({}sender fault): {}",
                    failed.code(),
                    if failed.sender_fault() { "" } else { "no " },
                    failed.message().unwrap_or_default()
                );
                Some((body.clone(), reason))
            })
            .collect())
    }
}

fn sdk_error<E: std::error::Error + 'static>(e: E) -> QueueError {
    QueueError(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())
}

#[async_trait]
impl Queue for SqsQueue {
    async fn send(&self, body: String) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    /// `SendMessageBatch` in groups of ten. Entries SQS fails one by one (throttling,
    /// an internal error) are sent once more in a group of their own; what fails
    /// again is the error.
    async fn send_batch(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        let mut bodies = bodies.into_iter().peekable();
        while bodies.peek().is_some() {
            let group: Vec<String> = bodies.by_ref().take(BATCH_ENTRIES).collect();
            let failed = self.send_group(group).await?;
            if failed.is_empty() {
                continue;
            }
            let again = failed.into_iter().map(|(body, _)| body).collect();
            if let Some((_, reason)) = self.send_group(again).await?.into_iter().next() {
                return Err(QueueError(format!(
                    "SendMessageBatch entry failed: {reason}"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use aws_credential_types::Credentials;
    use aws_credential_types::provider::SharedCredentialsProvider;
    use serde_json::{Value, json};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    use super::*;

    /// The entries of each `SendMessageBatch` call a local SQS stand-in received; it
    /// fails the entries `fail(call, id)` names (as SQS fails one entry of a batch).
    async fn sqs_stand_in(
        fail: fn(usize, &str) -> bool,
    ) -> (SqsQueue, Arc<Mutex<Vec<Vec<String>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let calls = calls.clone();
                tokio::spawn(async move {
                    let mut socket = BufReader::new(socket);
                    // One request after another on the kept-alive connection.
                    loop {
                        let mut length = 0;
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if socket.read_line(&mut line).await.unwrap_or(0) == 0 {
                                return;
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if let Some((name, value)) = line.split_once(':')
                                && name.eq_ignore_ascii_case("content-length")
                            {
                                length = value.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        socket.read_exact(&mut body).await.unwrap();
                        let request: Value = serde_json::from_slice(&body).unwrap();
                        let entries = request["Entries"].as_array().unwrap();
                        let call = {
                            let mut calls = calls.lock().unwrap();
                            calls.push(
                                entries
                                    .iter()
                                    .map(|e| e["MessageBody"].as_str().unwrap().to_string())
                                    .collect(),
                            );
                            calls.len() - 1
                        };
                        let (failed, successful): (Vec<&Value>, Vec<&Value>) = entries
                            .iter()
                            .partition(|e| fail(call, e["Id"].as_str().unwrap()));
                        let answer = json!({
                            "Successful": successful.iter().map(|e| json!({
                                "Id": e["Id"], "MessageId": format!("m-{call}-{}", e["Id"]),
                                "MD5OfMessageBody": "0123456789abcdef0123456789abcdef"})).collect::<Vec<_>>(),
                            "Failed": failed.iter().map(|e| json!({
                                "Id": e["Id"], "SenderFault": false, "Code": "InternalError",
                                "Message": "try again"})).collect::<Vec<_>>(),
                        })
                        .to_string();
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\n\r\n{answer}",
                            answer.len()
                        );
                        socket.write_all(response.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        let credentials =
            SharedCredentialsProvider::new(Credentials::new("id", "secret", None, None, "test"));
        let sdk = crate::aws::sdk_config("us-east-1", credentials, Some(&url));
        let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&sdk), format!("{url}/q"));
        (queue, seen)
    }

    fn bodies(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("{{\"job_id\":\"job-{i}\"}}"))
            .collect()
    }

    #[tokio::test]
    async fn send_batch_sends_groups_of_ten_and_failed_entries_once_more() {
        // The first call fails its fourth entry once.
        let (queue, calls) = sqs_stand_in(|call, id| call == 0 && id == "3").await;
        queue.send_batch(bodies(25)).await.unwrap();
        let calls = calls.lock().unwrap().clone();
        let sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            [10, 1, 10, 5],
            "ten a call, the failed entry alone again"
        );
        assert_eq!(calls[1], ["{\"job_id\":\"job-3\"}"]);
        // Without the attempt that failed, every body exactly once.
        let mut delivered: Vec<String> = calls.concat();
        delivered.remove(3);
        delivered.sort();
        let mut sent = bodies(25);
        sent.sort();
        assert_eq!(delivered, sent);
    }

    #[tokio::test]
    async fn an_entry_that_fails_twice_is_the_error() {
        let (queue, calls) = sqs_stand_in(|_, id| id == "0").await;
        let error = queue.send_batch(bodies(12)).await.unwrap_err();
        assert!(error.0.contains("InternalError"), "{error}");
        let sizes: Vec<usize> = calls.lock().unwrap().iter().map(Vec::len).collect();
        assert_eq!(sizes, [10, 1], "nothing sent after the failure");
    }
}
