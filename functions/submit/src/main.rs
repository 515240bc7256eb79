//! `submit`: S3 `ObjectCreated` events under `inbox/` → one provider batch per part.

use batchline::pipeline::{env, events};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    env::init_tracing();
    let ctx = env::context_from_env().await?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<serde_json::Value>| async {
        let outcomes = events::handle_submit_payload(&ctx, event.payload).await?;
        Ok::<_, Error>(serde_json::to_value(outcomes)?)
    }))
    .await
}
