//! `provider-emulator --port N`: serves the emulator until interrupted.
//! `--quotas '{"openai_enqueued_tokens": 90000}'` sets the batch quotas at start
//! (the same JSON as `POST /_emulator/quotas`). `--s3-endpoint URL` points Bedrock batch
//! jobs at an S3 (moto) server; `--bedrock-min-records N` lowers their minimum of records.

use batchline_emulator::{Config, Emulator, Quotas};

const USAGE: &str = "usage: provider-emulator [--port N] [--step-ms MS] [--api-key KEY] [--quotas JSON] [--s3-endpoint URL] [--bedrock-min-records N]";

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut bind = "127.0.0.1:0".to_string();
    let mut config = Config::default();
    let mut quotas = Quotas::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => bind = format!("127.0.0.1:{}", args.next().unwrap_or_default()),
            "--step-ms" => {
                let ms: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(300);
                config.step = std::time::Duration::from_millis(ms);
            }
            "--api-key" => config.api_key = args.next().unwrap_or_default(),
            "--s3-endpoint" => config.s3_endpoint = args.next(),
            "--bedrock-min-records" => {
                let text = args.next().unwrap_or_default();
                config.bedrock.min_records = text.parse().unwrap_or_else(|_| {
                    eprintln!("--bedrock-min-records {text:?} is not a number; {USAGE}");
                    std::process::exit(2);
                });
            }
            "--quotas" => {
                let json = args.next().unwrap_or_default();
                quotas = serde_json::from_str(&json).unwrap_or_else(|e| {
                    eprintln!("--quotas {json:?} is not a quotas object: {e}; {USAGE}");
                    std::process::exit(2);
                });
            }
            other => {
                eprintln!("unknown argument {other}; {USAGE}");
                std::process::exit(2);
            }
        }
    }
    let emulator = Emulator::start_on(&bind, config).await?;
    emulator.set_quotas(quotas);
    println!(
        "provider emulator listening on {} (results order seed {}, set EMULATOR_SEED to replay)",
        emulator.base_url(),
        emulator.shared.config.seed
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
