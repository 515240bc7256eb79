//! `submit`: S3 `ObjectCreated` events under `inbox/` → one provider batch per part.

use aws_lambda_events::event::s3::S3Event;
use batchline::pipeline::{env, events};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    env::init_tracing();
    let ctx = env::context_from_env().await?;
    lambda_runtime::run(service_fn(|event: LambdaEvent<S3Event>| async {
        let outcomes = events::handle_s3_event(&ctx, event.payload).await?;
        Ok::<_, Error>(serde_json::to_value(outcomes)?)
    }))
    .await
}
