//! AWS Signature Version 4, checked as AWS front ends check it: the server rebuilds the
//! canonical request from what it received and compares signatures. Pure functions; the
//! Bedrock router wraps [`verify`] in a middleware. [`sign`] is the client side, for tests.

use axum::http::HeaderMap;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far `x-amz-date` may be from the server's clock (AWS allows 15 minutes).
const MAX_SKEW: time::Duration = time::Duration::minutes(15);
/// RFC 3986 unreserved characters stay as they are; everything else is encoded.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Paths keep their slashes.
const PATH: &AsciiSet = &UNRESERVED.remove(b'/');

/// What the signature covers: the request as received (path and query still encoded).
#[derive(Debug, Clone, Copy)]
pub struct Signable<'a> {
    pub method: &'a str,
    /// The raw path, e.g. `/model-invocation-job/arn%3Aaws%3A…`.
    pub path: &'a str,
    /// The raw query string without `?` (empty when none).
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Why a request is refused: the AWS error code (`x-amzn-ErrorType`, all 403) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub kind: &'static str,
    pub message: String,
}

fn reject(kind: &'static str, message: impl Into<String>) -> Rejection {
    Rejection {
        kind,
        message: message.into(),
    }
}

/// HMAC-SHA256 (RFC 2104) over the workspace's `sha2`.
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(data)
        .finalize();
    Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// The credential scope of a signature: `date/region/service/aws4_request`.
fn scope(date: &str, region: &str, service: &str) -> String {
    format!("{date}/{region}/{service}/aws4_request")
}

/// The canonical request over the `signed` headers (lower case, sorted). The path is
/// encoded once more, as every AWS service but S3 does.
fn canonical_request(request: &Signable, signed: &[String]) -> String {
    let path = if request.path.is_empty() {
        "/"
    } else {
        request.path
    };
    let mut query: Vec<(String, String)> = request
        .query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let encode = |text: &str| {
                let decoded = percent_decode_str(text).decode_utf8_lossy();
                utf8_percent_encode(&decoded, UNRESERVED).to_string()
            };
            (encode(name), encode(value))
        })
        .collect();
    query.sort();
    let query: Vec<String> = query.iter().map(|(n, v)| format!("{n}={v}")).collect();
    let mut headers = String::new();
    for name in signed {
        let values: Vec<String> = request
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|value| {
                let text = String::from_utf8_lossy(value.as_bytes());
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect();
        headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    let payload = match request.headers.get("x-amz-content-sha256") {
        Some(hash) => String::from_utf8_lossy(hash.as_bytes()).into_owned(),
        None => hex::encode(Sha256::digest(request.body)),
    };
    [
        request.method.to_string(),
        utf8_percent_encode(path, PATH).to_string(),
        query.join("&"),
        headers,
        signed.join(";"),
        payload,
    ]
    .join("\n")
}

/// The hex signature of `request` over `signed` headers at `amz_date` (`YYYYMMDDTHHMMSSZ`).
fn signature(
    request: &Signable,
    signed: &[String],
    amz_date: &str,
    secret: &str,
    region: &str,
    service: &str,
) -> String {
    let date = &amz_date[..8.min(amz_date.len())];
    let to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{}\n{}",
        scope(date, region, service),
        hex::encode(Sha256::digest(canonical_request(request, signed)))
    );
    let mut key = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    hex::encode(hmac_sha256(&key, to_sign.as_bytes()))
}

fn amz_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.format(format_description!(
        "[year][month][day]T[hour][minute][second]Z"
    ))
    .expect("formatting a UTC time")
}

fn parse_amz_date(text: &str) -> Option<OffsetDateTime> {
    PrimitiveDateTime::parse(
        text,
        format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .ok()
    .map(PrimitiveDateTime::assume_utc)
}

/// A request that passed: the region its signature is scoped to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub region: String,
}

/// Checks the `Authorization: AWS4-HMAC-SHA256 …` header of `request` for `service`
/// against the one key pair the emulator knows, at `now`.
pub fn verify(
    request: &Signable,
    access_key_id: &str,
    secret: &str,
    service: &str,
    now: OffsetDateTime,
) -> Result<Verified, Rejection> {
    let Some(authorization) = request.headers.get("authorization") else {
        return Err(reject(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let authorization = authorization.to_str().unwrap_or("");
    let incomplete = |what: &str| {
        reject(
            "IncompleteSignatureException",
            format!(
                "Authorization header requires '{what}' parameter. Authorization={authorization}"
            ),
        )
    };
    let Some(fields) = authorization.strip_prefix(&format!("{ALGORITHM} ")) else {
        return Err(reject(
            "IncompleteSignatureException",
            format!("Unsupported authorization type; expected {ALGORITHM}."),
        ));
    };
    let field = |name: &str| {
        fields
            .split(',')
            .filter_map(|part| part.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    };
    let credential = field("Credential").ok_or_else(|| incomplete("Credential"))?;
    let signed_headers = field("SignedHeaders").ok_or_else(|| incomplete("SignedHeaders"))?;
    let sent_signature = field("Signature").ok_or_else(|| incomplete("Signature"))?;
    let parts: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, scoped_service, "aws4_request"] = parts[..] else {
        return Err(reject(
            "IncompleteSignatureException",
            format!(
                "Credential should be of the form 'ACCESS_KEY/DATE/REGION/SERVICE/aws4_request', got '{credential}'."
            ),
        ));
    };
    if key_id != access_key_id {
        return Err(reject(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        ));
    }
    if scoped_service != service {
        return Err(reject(
            "InvalidSignatureException",
            format!("Credential should be scoped to correct service: '{service}'."),
        ));
    }
    let Some(sent_date) = request
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
    else {
        return Err(reject(
            "IncompleteSignatureException",
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        ));
    };
    let Some(signed_at) = parse_amz_date(sent_date) else {
        return Err(reject(
            "IncompleteSignatureException",
            format!("Date must be in ISO-8601 'basic format'. Got '{sent_date}'."),
        ));
    };
    if !sent_date.starts_with(date) {
        return Err(reject(
            "InvalidSignatureException",
            format!(
                "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{date}' != '{}'.",
                &sent_date[..8]
            ),
        ));
    }
    if (now - signed_at).abs() > MAX_SKEW {
        return Err(reject(
            "InvalidSignatureException",
            format!(
                "Signature expired: {sent_date} is now earlier than {} ({} - 5 min.)",
                amz_date(now - MAX_SKEW),
                amz_date(now)
            ),
        ));
    }
    let signed: Vec<String> = signed_headers.split(';').map(str::to_string).collect();
    if !signed.iter().any(|name| name == "host") {
        return Err(reject(
            "InvalidSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    let expected = signature(request, &signed, sent_date, secret, region, service);
    if expected != sent_signature {
        return Err(reject(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(Verified {
        region: region.to_string(),
    })
}

/// Signs `request` (whose headers must hold `host`) at `now`: the `x-amz-date` and
/// `authorization` headers to add. Every header of the request is signed.
pub fn sign(
    request: &Signable,
    access_key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
    now: OffsetDateTime,
) -> [(&'static str, String); 2] {
    let date = amz_date(now);
    let mut headers = request.headers.clone();
    headers.insert(
        "x-amz-date",
        date.parse().expect("a date is a valid header value"),
    );
    let mut signed: Vec<String> = headers
        .keys()
        .map(|name| name.as_str().to_string())
        .collect();
    signed.sort();
    signed.dedup();
    let with_date = Signable {
        headers: &headers,
        ..*request
    };
    let signature = signature(&with_date, &signed, &date, secret, region, service);
    let authorization = format!(
        "{ALGORITHM} Credential={access_key_id}/{}, SignedHeaders={}, Signature={signature}",
        scope(&date[..8], region, service),
        signed.join(";")
    );
    [("x-amz-date", date), ("authorization", authorization)]
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// The worked example of the AWS SigV4 documentation (IAM `ListUsers`).
    #[test]
    fn signatures_match_the_aws_documentation_example() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        headers.insert("host", HeaderValue::from_static("iam.amazonaws.com"));
        headers.insert("x-amz-date", HeaderValue::from_static("20150830T123600Z"));
        let request = Signable {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: &headers,
            body: b"",
        };
        let signed: Vec<String> = ["content-type", "host", "x-amz-date"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            signature(
                &request,
                &signed,
                "20150830T123600Z",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                "us-east-1",
                "iam"
            ),
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    fn signed_request(headers: &mut HeaderMap, secret: &str, now: OffsetDateTime) {
        let request = Signable {
            method: "GET",
            path: "/model-invocation-job/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Amodel-invocation-job%2Fabc",
            query: "",
            headers,
            body: b"",
        };
        for (name, value) in sign(&request, "test", secret, "eu-west-1", "bedrock", now) {
            headers.insert(name, value.parse().unwrap());
        }
    }

    fn check(headers: &HeaderMap, now: OffsetDateTime) -> Result<Verified, Rejection> {
        let request = Signable {
            method: "GET",
            path: "/model-invocation-job/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Amodel-invocation-job%2Fabc",
            query: "",
            headers,
            body: b"",
        };
        verify(&request, "test", "test", "bedrock", now)
    }

    #[test]
    fn verifies_good_signatures_and_refuses_the_rest() {
        let now = OffsetDateTime::now_utc();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("127.0.0.1:9"));
        let mut good = headers.clone();
        signed_request(&mut good, "test", now);
        assert_eq!(
            check(&good, now),
            Ok(Verified {
                region: "eu-west-1".into()
            })
        );

        let mut wrong_secret = headers.clone();
        signed_request(&mut wrong_secret, "not-the-secret", now);
        assert_eq!(
            check(&wrong_secret, now).unwrap_err().kind,
            "InvalidSignatureException"
        );

        // A signed header changed after signing.
        let mut tampered = good.clone();
        tampered.insert("host", HeaderValue::from_static("127.0.0.1:10"));
        assert_eq!(
            check(&tampered, now).unwrap_err().kind,
            "InvalidSignatureException"
        );

        let later = now + time::Duration::minutes(20);
        assert!(
            check(&good, later)
                .unwrap_err()
                .message
                .starts_with("Signature expired")
        );

        assert_eq!(
            check(&headers, now).unwrap_err().kind,
            "MissingAuthenticationTokenException"
        );
        let mut other_key = good.clone();
        let authorization = good["authorization"]
            .to_str()
            .unwrap()
            .replace("=test/", "=AKIAOTHER/");
        other_key.insert("authorization", authorization.parse().unwrap());
        assert_eq!(
            check(&other_key, now).unwrap_err().kind,
            "UnrecognizedClientException"
        );
    }
}
