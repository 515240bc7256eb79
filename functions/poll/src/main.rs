//! `poll`: on a schedule, checks every open job's batches and queues the ended parts.

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use batchline::pipeline::{env, poll};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    env::init_tracing();
    let ctx = env::context_from_env().await?;
    lambda_runtime::run(service_fn(|_: LambdaEvent<EventBridgeEvent>| async {
        let report = poll(&ctx).await?;
        tracing::info!(?report, "poll");
        Ok::<_, Error>(serde_json::to_value(report)?)
    }))
    .await
}
