//! The world the collect benchmark runs in: moto S3 (a child process), the provider
//! emulator (in this process) holding one finished OpenAI batch with the results
//! body, and one fresh job record per run that points at that batch.

use std::sync::Arc;
use std::time::Duration;

use batchline::model::ProviderKind;
use batchline::pipeline::job::{self, JobStatus, keys};
use batchline::pipeline::spec::ResultFormat;
use batchline::storage::{ObjectStore, S3Store};
use batchline_emulator::harness::{API_KEY, Moto, http_client, moto_sdk_config, store_ended_part};
use batchline_emulator::{Config, Emulator};
use bytes::Bytes;

use crate::child::model_for;

pub const BUCKET: &str = "batchline-bench";

pub struct CollectEnv {
    runtime: tokio::runtime::Runtime,
    pub moto: Moto,
    pub emulator: Emulator,
    store: Arc<dyn ObjectStore>,
    batch_id: String,
    rows: usize,
}

impl CollectEnv {
    /// Starts moto and the emulator and hands the emulator a finished batch whose
    /// output file is `results` (`rows` lines, ids `request-0…`).
    pub fn start(results: Bytes, rows: usize) -> Result<Self, String> {
        let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
        // The bench venv's moto completes multipart uploads the way the SDK expects.
        let moto = Moto::start_in(".venv-bench");
        let (emulator, store, batch_id) = runtime.block_on(async {
            let emulator = Emulator::start(Config {
                step: Duration::from_millis(50),
                api_key: API_KEY.into(),
                ..Config::default()
            })
            .await
            .map_err(|e| format!("emulator: {e}"))?;
            let batch_id = preload(&emulator.base_url(), results).await?;
            let sdk = moto_sdk_config(&moto.url);
            let client = S3Store::client_from(&sdk, true);
            client
                .create_bucket()
                .bucket(BUCKET)
                .send()
                .await
                .map_err(|e| format!("creating the bucket: {e}"))?;
            let store: Arc<dyn ObjectStore> = Arc::new(S3Store::new(client, BUCKET));
            Ok::<_, String>((emulator, store, batch_id))
        })?;
        Ok(Self {
            runtime,
            moto,
            emulator,
            store,
            batch_id,
            rows,
        })
    }

    /// A job of one ended part whose batch is the preloaded one, its successes
    /// written in `formats`; answers its id.
    pub fn prepare_job(&self, run: usize, formats: &[ResultFormat]) -> Result<String, String> {
        let names: Vec<&str> = formats.iter().map(|f| f.as_str()).collect();
        let job_id = format!("bench-collect-{}-{run}", names.join("-"));
        self.runtime
            .block_on(store_ended_part(
                self.store.as_ref(),
                BUCKET,
                &job_id,
                model_for(ProviderKind::OpenAi),
                &self.batch_id,
                self.rows,
                formats,
            ))
            .map_err(|e| e.to_string())?;
        Ok(job_id)
    }

    /// Checks that the run closed the job with a summary and wrote its successes, then
    /// deletes what it wrote so that moto's memory stays flat across runs. Answers
    /// the size of the successes objects.
    pub fn check_and_clean(&self, job_id: &str) -> Result<SuccessesWritten, String> {
        self.runtime.block_on(async {
            let closed = job::load(self.store.as_ref(), job_id)
                .await
                .map_err(|e| e.to_string())?;
            if closed.record.status != JobStatus::Completed {
                return Err(format!("job {job_id} is {:?}", closed.record.status));
            }
            self.store
                .head(&keys::summary(job_id), None)
                .await
                .map_err(|e| e.to_string())?;
            let size = |key: String| async move {
                let meta = self.store.head(&key, None).await;
                meta.map(|meta| meta.size).map_err(|e| e.to_string())
            };
            let written = SuccessesWritten {
                jsonl: size(keys::successes(job_id, 0)).await?,
                parquet: match closed.record.table {
                    Some(_) => Some(size(keys::successes_parquet(job_id, 0)).await?),
                    None => None,
                },
            };
            for prefix in [format!("results/{job_id}/"), format!("jobs/{job_id}/")] {
                for key in self.store.list(&prefix).await.map_err(|e| e.to_string())? {
                    self.store.delete(&key).await.map_err(|e| e.to_string())?;
                }
            }
            Ok(written)
        })
    }
}

/// The sizes of the successes objects one collect wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct SuccessesWritten {
    /// `successes/part-00000.jsonl`.
    pub jsonl: u64,
    /// `successes/part-00000.parquet`, when the job asked for it.
    pub parquet: Option<u64>,
}

/// `POST /_emulator/openai/batches`: a batch that ended with `results` as its output.
async fn preload(base: &str, results: Bytes) -> Result<String, String> {
    let batch: serde_json::Value = http_client()
        .post(format!("{base}/_emulator/openai/batches"))
        .body(results)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("preloading the batch: {e}"))?
        .json()
        .await
        .map_err(|e| format!("preloading the batch: {e}"))?;
    batch["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("the emulator answered no batch id: {batch}"))
}
