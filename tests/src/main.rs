//! `provider-emulator --port N`: serves the emulator until interrupted.

use batchline_emulator::{Config, Emulator};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut bind = "127.0.0.1:0".to_string();
    let mut config = Config::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => bind = format!("127.0.0.1:{}", args.next().unwrap_or_default()),
            "--step-ms" => {
                let ms: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(300);
                config.step = std::time::Duration::from_millis(ms);
            }
            "--api-key" => config.api_key = args.next().unwrap_or_default(),
            other => {
                eprintln!(
                    "unknown argument {other}; usage: provider-emulator [--port N] [--step-ms MS] [--api-key KEY]"
                );
                std::process::exit(2);
            }
        }
    }
    let emulator = Emulator::start_on(&bind, config).await?;
    println!(
        "provider emulator listening on {} (results order seed {}, set EMULATOR_SEED to replay)",
        emulator.base_url(),
        emulator.shared.config.seed
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
