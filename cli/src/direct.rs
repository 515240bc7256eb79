//! Direct mode: the providers' batch APIs from this machine, keys from the usual
//! environment variables (`OPENAI_API_KEY`, `ANTHROPIC_API_KEY`, `GEMINI_API_KEY`,
//! Google application default credentials), never printed.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use batchline::model::ModelRef;
use batchline::pipeline::ProviderSource;
use batchline::provider::config::ProviderConfig;
use batchline::provider::{BatchProvider, BatchTags, connect};
use batchline::request::AnswerFormat;
use batchline::results::{Outcome, ResultParser};
use batchline::status::BatchStatus;
use batchline::{ProviderKind, Result};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::args::BatchesCommand;
use crate::error::{CliError, CliResult};
use crate::files::{Sink, file_name, read_schema};
use crate::output::{Output, Table};

/// Provider clients configured from the environment, built on first use.
#[derive(Debug, Default)]
pub struct EnvironmentProviders {
    clients: Mutex<HashMap<ProviderKind, Arc<dyn BatchProvider>>>,
}

#[async_trait]
impl ProviderSource for EnvironmentProviders {
    async fn provider(&self, kind: ProviderKind) -> Result<Arc<dyn BatchProvider>> {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&kind) {
            return Ok(client.clone());
        }
        let client = connect(kind, &ProviderConfig::from_env(kind)?)?;
        clients.insert(kind, client.clone());
        Ok(client)
    }
}

/// Runs one `batches` verb.
pub async fn batches(command: BatchesCommand, output: &Output) -> CliResult {
    let providers = EnvironmentProviders::default();
    match command {
        BatchesCommand::List { provider } => {
            let batches = providers.provider(provider).await?.list().await?;
            print_batches(output, &batches);
            Ok(())
        }
        BatchesCommand::Create { file, model } => {
            let model: ModelRef = model
                .parse()
                .map_err(|e: batchline::model::InvalidModel| CliError::Usage(e.to_string()))?;
            let input = tokio::fs::read(&file)
                .await
                .map_err(|e| CliError::file(&file, e))?;
            let tags = BatchTags::from([
                ("created_by".to_string(), "batchline-cli".to_string()),
                ("file".to_string(), file_name(&file)),
            ]);
            let client = providers.provider(model.provider).await?;
            let status = client.create(&model.model, input.into(), &tags).await?;
            print_batches(output, std::slice::from_ref(&status));
            Ok(())
        }
        BatchesCommand::Results {
            batch_id,
            provider,
            schema,
            output: path,
        } => {
            let format = match schema {
                Some(path) => AnswerFormat::Schema(read_schema(&path).await?),
                None => AnswerFormat::Text,
            };
            let client = providers.provider(provider).await?;
            let status = client.status(&batch_id).await?;
            if !status.state.is_terminal() {
                return Err(CliError::Usage(format!(
                    "batch {batch_id} has not ended (it is {}): its results are not out yet",
                    status.raw_status
                )));
            }
            let tally =
                write_outcomes(client.as_ref(), provider, &format, &batch_id, &path).await?;
            if output.json {
                output.print_json(&tally);
            } else {
                eprintln!(
                    "{} requests: {} succeeded, {} failed -> {}",
                    tally.succeeded + tally.failed,
                    tally.succeeded,
                    tally.failed,
                    path.display()
                );
            }
            Ok(())
        }
        BatchesCommand::Cancel { batch_id, provider } => {
            let status = providers
                .provider(provider)
                .await?
                .cancel(&batch_id)
                .await?;
            print_batches(output, std::slice::from_ref(&status));
            Ok(())
        }
    }
}

/// What `batches results` wrote.
#[derive(Debug, Default, Serialize)]
struct ResultsTally {
    succeeded: u64,
    failed: u64,
}

/// Streams the batch's results through the library's parser into `path`: one outcome
/// per line, whatever the size of the batch.
async fn write_outcomes(
    client: &dyn BatchProvider,
    provider: ProviderKind,
    format: &AnswerFormat,
    batch_id: &str,
    path: &Path,
) -> CliResult<ResultsTally> {
    // No manifest: a batch another tool created carries its ids in its lines.
    let parser = ResultParser::with_format(provider, format, Arc::from(Vec::new()))?;
    let mut sink = Sink::open(path).await?;
    let mut lines = client.results(batch_id).await?;
    let (mut tally, mut outcomes, mut buffer) = (ResultsTally::default(), Vec::new(), Vec::new());
    let mut line_no = 0;
    while let Some(line) = lines.next().await {
        line_no += 1;
        parser.parse_line_into(line_no, &line?, &mut outcomes);
        for outcome in outcomes.drain(..) {
            match &outcome {
                Outcome::Success(_) => tally.succeeded += 1,
                Outcome::Error(_) => tally.failed += 1,
            }
            outcome.write_jsonl(&mut buffer);
        }
        if buffer.len() > 1 << 20 {
            sink.write(&buffer, path).await?;
            buffer.clear();
        }
    }
    sink.write(&buffer, path).await?;
    sink.finish(path).await?;
    Ok(tally)
}

fn print_batches(output: &Output, batches: &[BatchStatus]) {
    if output.json {
        output.print_json(&batches);
        return;
    }
    let mut table = Table::new(vec![
        "batch",
        "state",
        "status",
        "succeeded",
        "failed",
        "total",
        "created",
    ]);
    for batch in batches {
        let state = crate::view::wire_name(&batch.state);
        table.row(vec![
            batch.batch_id.clone(),
            output.state(&state),
            batch.raw_status.clone(),
            batch.counts.succeeded.to_string(),
            batch.counts.failed.to_string(),
            batch.counts.total.to_string(),
            batch.created_at.clone().unwrap_or_default(),
        ]);
    }
    table.print();
}
