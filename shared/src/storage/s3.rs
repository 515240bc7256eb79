//! The S3 object store (also speaks to moto in tests through `AWS_ENDPOINT_URL`).
//!
//! Writes are not payload-signed: SigV4 would hash every byte of the results once
//! more. The CRC32 the SDK sends with each body still lets S3 reject a damaged one,
//! and TLS protects it on the way.

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::StreamExt;

use super::port::{ByteStream, ObjectMeta, ObjectStore, PutMode, StoreError, StoreResult};

/// One bucket of S3, through the SDK client.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
}

impl S3Store {
    /// The store over `bucket`, reached through `client`.
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
    }

    /// A client from shared AWS configuration; path-style addressing is what local S3
    /// servers (moto) need.
    pub fn client_from(config: &aws_types::SdkConfig, force_path_style: bool) -> Client {
        let s3_config = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(force_path_style)
            .build();
        Client::from_conf(s3_config)
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

/// Maps an SDK error onto the three cases callers act on.
fn classify<E, R>(operation: &'static str, key: &str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + HasStatus,
{
    let status = err.raw_response().map(HasStatus::status_code);
    let code = err.code().map(str::to_string);
    match (status, code.as_deref()) {
        (Some(404), _) | (_, Some("NoSuchKey" | "NotFound")) => StoreError::NotFound {
            key: key.to_string(),
        },
        // 409 is S3's answer when two conditional writes race.
        (Some(412 | 409), _) | (_, Some("PreconditionFailed" | "ConditionalRequestConflict")) => {
            StoreError::Conflict {
                key: key.to_string(),
            }
        }
        _ => StoreError::Backend {
            operation,
            key: key.to_string(),
            message: aws_sdk_s3::error::DisplayErrorContext(&err).to_string(),
        },
    }
}

/// The HTTP status of a raw response, whatever the SDK's response type.
trait HasStatus {
    fn status_code(&self) -> u16;
}

impl HasStatus for aws_sdk_s3::config::http::HttpResponse {
    fn status_code(&self) -> u16 {
        self.status().as_u16()
    }
}

fn unquote(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_string()
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn head(&self, key: &str, version: Option<&str>) -> StoreResult<ObjectMeta> {
        let out = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(|e| classify("head", key, e))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: unquote(out.e_tag()),
            version_id: out.version_id().map(str::to_string),
        })
    }

    async fn get(&self, key: &str) -> StoreResult<(ObjectMeta, Bytes)> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("get", key, e))?;
        let meta = ObjectMeta {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            etag: unquote(out.e_tag()),
            version_id: out.version_id().map(str::to_string),
        };
        let body = out.body.collect().await.map_err(|e| StoreError::Backend {
            operation: "get",
            key: key.to_string(),
            message: e.to_string(),
        })?;
        Ok((meta, body.into_bytes()))
    }

    async fn get_stream(
        &self,
        key: &str,
        version: Option<&str>,
        from: u64,
    ) -> StoreResult<ByteStream> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .set_version_id(version.map(str::to_string))
            .set_range((from > 0).then(|| format!("bytes={from}-")))
            .send()
            .await
            .map_err(|e| classify("get", key, e))?;
        let key = key.to_string();
        let stream = futures::stream::unfold(Some(out.body), move |body| {
            let key = key.clone();
            async move {
                let mut body = body?;
                match body.next().await? {
                    Ok(chunk) => Some((Ok(chunk), Some(body))),
                    Err(e) => Some((
                        Err(StoreError::Backend {
                            operation: "get",
                            key,
                            message: e.to_string(),
                        }),
                        None,
                    )),
                }
            }
        });
        Ok(stream.boxed())
    }

    async fn put(&self, key: &str, body: Bytes, mode: PutMode) -> StoreResult<String> {
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(SdkByteStream::from(body));
        let request = match &mode {
            PutMode::Overwrite => request,
            PutMode::Create => request.if_none_match("*"),
            PutMode::Update(etag) => request.if_match(format!("\"{etag}\"")),
        };
        let out = request
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| classify("put", key, e))?;
        Ok(unquote(out.e_tag()))
    }

    async fn delete(&self, key: &str) -> StoreResult<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("delete", key, e))?;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> StoreResult<Vec<String>> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify("list", prefix, e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
        }
        Ok(keys)
    }

    async fn start_upload(&self, key: &str) -> StoreResult<String> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify("start_upload", key, e))?;
        out.upload_id()
            .map(str::to_string)
            .ok_or_else(|| StoreError::Backend {
                operation: "start_upload",
                key: key.to_string(),
                message: "no upload id in the answer".to_string(),
            })
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: i32,
        body: Bytes,
    ) -> StoreResult<String> {
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(SdkByteStream::from(body))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| classify("upload_part", key, e))?;
        Ok(out.e_tag().unwrap_or_default().to_string())
    }

    async fn complete_upload(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<(i32, String)>,
    ) -> StoreResult<()> {
        let parts = parts
            .into_iter()
            .map(|(n, etag)| CompletedPart::builder().part_number(n).e_tag(etag).build())
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify("complete_upload", key, e))?;
        Ok(())
    }

    async fn abort_upload(&self, key: &str, upload_id: &str) -> StoreResult<()> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| classify("abort_upload", key, e))?;
        Ok(())
    }
}
