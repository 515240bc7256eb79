//! `poll`: on a schedule, checks every open job's batches and queues the ended parts;
//! with many open jobs the tick fans out, and the same function polls each job from
//! the fan-out queue's SQS events (failed messages reported back to SQS).

use batchline::pipeline::{env, events};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    env::init_tracing();
    let ctx = env::context_from_env().await?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<serde_json::Value>| async {
        let response = events::handle_poll_payload(&ctx, event.payload).await?;
        Ok::<_, Error>(serde_json::to_value(response)?)
    }))
    .await
}
