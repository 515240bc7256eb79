//! `collect`: ready-queue messages → validated results in S3, per-message failures
//! reported back to SQS.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use batchline::pipeline::{env, events};
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    env::init_tracing();
    let ctx = env::context_from_env().await?;
    let max_receives = env::collect_max_receives();
    lambda_runtime::run(service_fn(|event: LambdaEvent<SqsEvent>| async {
        Ok::<SqsBatchResponse, Error>(
            events::handle_sqs_event(&ctx, event.payload, max_receives).await,
        )
    }))
    .await
}
