//! The S3 side of batch jobs: an SDK client for the configured endpoint (path-style,
//! `us-east-1`, the test key pair), reading a job's input objects and writing its output.

use std::sync::Mutex;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use bytes::Bytes;

use crate::common::{Shared, lock};

use super::validation::parse_s3_uri;

/// One client per endpoint, made when first needed (the endpoint can change at run time).
#[derive(Default)]
pub(super) struct S3Clients {
    cached: Mutex<Option<(String, Client)>>,
}

impl S3Clients {
    /// A client for the S3 endpoint in force, or why there is none.
    pub(super) fn client(&self, shared: &Shared) -> Result<Client, String> {
        let Some(endpoint) = lock(&shared.s3_endpoint).clone() else {
            return Err("The emulator has no S3 endpoint: start it with --s3-endpoint, or set one with Emulator::set_s3_endpoint or POST /_emulator/bedrock.".to_string());
        };
        let mut cached = lock(&self.cached);
        if let Some((url, client)) = cached.as_ref()
            && *url == endpoint
        {
            return Ok(client.clone());
        }
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "emulator"))
            .endpoint_url(&endpoint)
            .force_path_style(true)
            .http_client(https)
            .build();
        let client = Client::from_conf(config);
        *cached = Some((endpoint, client.clone()));
        Ok(client)
    }
}

/// The input objects an `s3Uri` names, with their file names, in key order: the object
/// itself, or else the `.jsonl` objects under it as a folder. `Err` says why there is none.
pub(super) async fn read_input(client: &Client, uri: &str) -> Result<Vec<(String, Bytes)>, String> {
    let (bucket, key) = parse_s3_uri(uri).expect("input URIs were checked at create");
    let missing =
        || format!("The input S3 location {uri} does not exist or holds no .jsonl object.");
    if !key.is_empty() && !key.ends_with('/') {
        match get(client, bucket, key).await {
            Ok(Some(data)) => return Ok(vec![(file_name(key).to_string(), data)]),
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
    let prefix = match key {
        "" => String::new(),
        key if key.ends_with('/') => key.to_string(),
        key => format!("{key}/"),
    };
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .prefix(&prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|_| missing())?;
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|object| object.key())
                .filter(|key| key.ends_with(".jsonl"))
                .map(str::to_string),
        );
    }
    keys.sort();
    let mut objects = Vec::new();
    for key in keys {
        let data = get(client, bucket, &key).await?.ok_or_else(missing)?;
        objects.push((file_name(&key).to_string(), data));
    }
    if objects.is_empty() {
        return Err(missing());
    }
    Ok(objects)
}

fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// An object's bytes; `None` when there is no such object.
async fn get(client: &Client, bucket: &str, key: &str) -> Result<Option<Bytes>, String> {
    match client.get_object().bucket(bucket).key(key).send().await {
        Ok(object) => object
            .body
            .collect()
            .await
            .map(|data| Some(data.into_bytes()))
            .map_err(|e| format!("Reading s3://{bucket}/{key} failed: {e}")),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
        Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
        Err(e) => Err(format!(
            "Reading s3://{bucket}/{key} failed: {}",
            aws_sdk_s3::error::DisplayErrorContext(e)
        )),
    }
}

/// Whether the bucket of an `s3Uri` exists.
pub(super) async fn bucket_exists(client: &Client, uri: &str) -> bool {
    let (bucket, _) = parse_s3_uri(uri).expect("output URIs were checked at create");
    client.head_bucket().bucket(bucket).send().await.is_ok()
}

/// `<uri>/<name>`, whether `uri` ends with a slash or not: bucket and key.
pub(super) fn object_under(uri: &str, name: &str) -> (String, String) {
    let (bucket, key) = parse_s3_uri(uri).expect("output URIs were checked at create");
    let key = key.trim_end_matches('/');
    let key = if key.is_empty() {
        name.to_string()
    } else {
        format!("{key}/{name}")
    };
    (bucket.to_string(), key)
}

/// Writes one object.
pub(super) async fn put(
    client: &Client,
    bucket: &str,
    key: &str,
    data: Vec<u8>,
) -> Result<(), String> {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(data))
        .send()
        .await
        .map(|_| ())
        .map_err(|e| {
            format!(
                "Writing the output s3://{bucket}/{key} failed: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })
}
