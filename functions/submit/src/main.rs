//! `submit`: S3 `ObjectCreated` events under `inbox/` → one provider batch per part; the
//! submit queue's SQS events → the rest of a long upload an earlier invocation handed
//! over (failed messages reported back to SQS).

use batchline::pipeline::{env, events};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    env::init_tracing();
    let ctx = env::context_from_env().await?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<serde_json::Value>| async {
        let response = events::handle_submit_payload(&ctx, event.payload).await?;
        Ok::<_, Error>(serde_json::to_value(response)?)
    }))
    .await
}
