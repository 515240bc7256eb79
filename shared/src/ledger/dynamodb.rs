//! The ledger as a DynamoDB table (also speaks to moto in tests through
//! `AWS_ENDPOINT_URL`). One item per row, keyed `<pipeline>/<custom_id>` (neither part
//! can hold a `/`), so that rows spread over the table's partitions evenly.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, PutRequest, WriteRequest};

use super::port::{LedgerError, MAX_LOOKUP_IDS, SuccessLedger};

/// The key attribute: `<pipeline>/<custom_id>`.
const ROW: &str = "row";
/// The job holding the row's success.
const JOB: &str = "job";
/// Items per `BatchWriteItem` (DynamoDB's limit).
const MAX_WRITE_ITEMS: usize = 25;
/// Rounds for the keys or items DynamoDB hands back unprocessed when throttled.
const MAX_ROUNDS: u32 = 8;

/// A [`SuccessLedger`] over one DynamoDB table with the string hash key `row`.
#[derive(Debug, Clone)]
pub struct DynamoLedger {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoLedger {
    /// The ledger in `table`, reached through `client`.
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

fn row_key(pipeline: &str, id: &str) -> AttributeValue {
    AttributeValue::S(format!("{pipeline}/{id}"))
}

fn failed(operation: &'static str, message: impl std::fmt::Display) -> LedgerError {
    LedgerError {
        operation,
        message: message.to_string(),
    }
}

/// Waits before the next round of unprocessed work: 50 ms doubling, as AWS advises.
async fn back_off(round: u32) {
    tokio::time::sleep(Duration::from_millis(50 << round.min(6))).await;
}

#[async_trait]
impl SuccessLedger for DynamoLedger {
    async fn lookup(
        &self,
        pipeline: &str,
        ids: &[String],
    ) -> Result<HashMap<String, String>, LedgerError> {
        assert!(
            ids.len() <= MAX_LOOKUP_IDS,
            "lookup takes at most {MAX_LOOKUP_IDS} ids"
        );
        let mut found = HashMap::new();
        if ids.is_empty() {
            return Ok(found);
        }
        let prefix_len = pipeline.len() + 1;
        let keys = ids
            .iter()
            .map(|id| HashMap::from([(ROW.to_string(), row_key(pipeline, id))]))
            .collect();
        let mut pending = KeysAndAttributes::builder()
            .set_keys(Some(keys))
            .projection_expression("#row, #job")
            .expression_attribute_names("#row", ROW)
            .expression_attribute_names("#job", JOB)
            .build()
            .map_err(|e| failed("lookup", e))?;
        for round in 0..MAX_ROUNDS {
            let answer = self
                .client
                .batch_get_item()
                .request_items(&self.table, pending)
                .send()
                .await
                .map_err(|e| failed("lookup", aws_sdk_dynamodb::error::DisplayErrorContext(&e)))?;
            for item in answer
                .responses
                .unwrap_or_default()
                .remove(&self.table)
                .unwrap_or_default()
            {
                if let (Some(AttributeValue::S(row)), Some(AttributeValue::S(job))) =
                    (item.get(ROW), item.get(JOB))
                    && let Some(id) = row.get(prefix_len..)
                {
                    found.insert(id.to_string(), job.clone());
                }
            }
            match answer
                .unprocessed_keys
                .unwrap_or_default()
                .remove(&self.table)
            {
                Some(rest) if !rest.keys.is_empty() => {
                    pending = rest;
                    back_off(round).await;
                }
                _ => return Ok(found),
            }
        }
        Err(failed("lookup", "DynamoDB kept throttling the lookup"))
    }

    async fn record(&self, pipeline: &str, job: &str, ids: &[String]) -> Result<(), LedgerError> {
        for chunk in ids.chunks(MAX_WRITE_ITEMS) {
            let mut pending: Vec<WriteRequest> = chunk
                .iter()
                .map(|id| {
                    let put = PutRequest::builder()
                        .item(ROW, row_key(pipeline, id))
                        .item(JOB, AttributeValue::S(job.to_string()))
                        .build()
                        .map_err(|e| failed("record", e))?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<Result<_, LedgerError>>()?;
            let mut round = 0;
            while !pending.is_empty() {
                if round == MAX_ROUNDS {
                    return Err(failed("record", "DynamoDB kept throttling the writes"));
                }
                if round > 0 {
                    back_off(round).await;
                }
                let answer = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, pending)
                    .send()
                    .await
                    .map_err(|e| {
                        failed("record", aws_sdk_dynamodb::error::DisplayErrorContext(&e))
                    })?;
                pending = answer
                    .unprocessed_items
                    .unwrap_or_default()
                    .remove(&self.table)
                    .unwrap_or_default();
                round += 1;
            }
        }
        Ok(())
    }
}
