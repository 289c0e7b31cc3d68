//! External-S3 mode: step 1 hands out forms signed for another S3 server (s3s-fs, MinIO, …) and
//! step 3 asks that server, with a SigV4-signed `HEAD`, whether the object is there and how big it
//! is. The emulator's own S3 endpoint then goes unused: what the tool sends is judged by a server
//! we did not write.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

use super::policy::{ALGORITHM, Signer, hmac_hex, signing_key};

/// A secret given on the command line or in the environment; never shown by `Debug`.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_string()))
    }
}

/// The S3 server, bucket and account of external-S3 mode.
#[derive(Clone, Debug)]
pub struct ExternalS3 {
    /// `http://127.0.0.1:PORT`, no path.
    pub endpoint: url::Url,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: Secret,
    /// The client the emulator asks the server with: no proxy, short timeouts.
    http: reqwest::Client,
}

/// What `HEAD` tells of a stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub size: u64,
    /// The ETag without quotes, lower case (the MD5 in hex for a single-part upload).
    pub etag: String,
}

/// The SHA-256 of an empty payload, as `x-amz-content-sha256` of a request without a body.
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Everything but the unreserved characters `A-Z a-z 0-9 - . _ ~`, and `/` kept as the path
/// separator: SigV4's URI encoding of an S3 object path.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

impl ExternalS3 {
    /// Checks the endpoint (http or https on loopback, no path) and the bucket name.
    pub fn new(
        endpoint: &str,
        bucket: &str,
        region: &str,
        access_key: &str,
        secret_key: Secret,
    ) -> anyhow::Result<Self> {
        let url = url::Url::parse(endpoint.trim())
            .with_context(|| format!("--s3-endpoint {endpoint:?} is not a URL"))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https"),
            "--s3-endpoint {endpoint:?} must be an http:// or https:// URL"
        );
        anyhow::ensure!(
            crate::onepagecrm::is_loopback(&url),
            "--s3-endpoint {endpoint:?} is not on loopback; the emulator talks to local servers only"
        );
        anyhow::ensure!(
            matches!(url.path(), "" | "/") && url.query().is_none(),
            "--s3-endpoint {endpoint:?} must be the server's root URL, without a path or query (buckets are addressed path-style)"
        );
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        anyhow::ensure!(
            valid_bucket,
            "--s3-bucket {bucket:?} is not an S3 bucket name (3 to 63 lower-case letters, digits, `-` and `.`)"
        );
        anyhow::ensure!(!access_key.is_empty(), "--s3-access-key is empty");
        anyhow::ensure!(!secret_key.0.is_empty(), "--s3-secret-key is empty");
        anyhow::ensure!(
            !region.is_empty()
                && region
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-'),
            "--s3-region {region:?} is not a region name"
        );
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot set up the HTTP client for the external S3 server")?;
        Ok(Self {
            endpoint: url,
            bucket: bucket.to_string(),
            region: region.to_string(),
            access_key: access_key.to_string(),
            secret_key,
            http,
        })
    }

    /// `http://127.0.0.1:PORT/BUCKET/`: the form's `url`.
    pub fn bucket_url(&self) -> String {
        format!(
            "{}/{}/",
            self.endpoint.as_str().trim_end_matches('/'),
            self.bucket
        )
    }

    /// The signer of forms for this server's account and bucket.
    pub fn signer(&self) -> Signer {
        Signer {
            access_key: self.access_key.clone(),
            secret: self.secret_key.0.clone(),
            region: self.region.clone(),
            bucket: self.bucket.clone(),
        }
    }

    /// A `HEAD` of `path` (already URI-encoded), signed with SigV4 in the `Authorization` header.
    async fn head(&self, path: &str) -> Result<reqwest::Response, reqwest::Error> {
        let host = host_header(&self.endpoint);
        // The wall clock, not the emulator's: the other server judges the request by its own
        // (and the emulator's clock does not move in this mode).
        let now = Utc::now();
        let authorization = self.authorization(
            now,
            "HEAD",
            path,
            &[
                ("host", &host),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", &amz_date(now)),
            ],
            EMPTY_SHA256,
        );
        let url = format!("{}{}", self.endpoint.as_str().trim_end_matches('/'), path);
        self.http
            .head(url)
            .header("x-amz-content-sha256", EMPTY_SHA256)
            .header("x-amz-date", amz_date(now))
            .header(reqwest::header::AUTHORIZATION, authorization)
            .send()
            .await
    }

    /// Whether the bucket is there and the account may use it; said at start, so that a wrong
    /// endpoint, key or bucket shows before the first upload does.
    pub async fn check_bucket(&self) -> anyhow::Result<()> {
        let response = self
            .head(&format!("/{}", self.bucket))
            .await
            .with_context(|| format!("cannot reach the S3 server at {}", self.endpoint))?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            404 => anyhow::bail!(
                "the S3 server at {} has no bucket {:?}; create it first",
                self.endpoint,
                self.bucket
            ),
            401 | 403 => anyhow::bail!(
                "the S3 server at {} refused the access key and secret key (HTTP {})",
                self.endpoint,
                response.status().as_u16()
            ),
            status => anyhow::bail!(
                "the S3 server at {} answered HTTP {status} for the bucket {:?}",
                self.endpoint,
                self.bucket
            ),
        }
    }

    /// The size and ETag of the object `key`, or `None` when the server has no such object.
    pub async fn head_object(&self, key: &str) -> Result<Option<Head>, String> {
        let path = format!("/{}/{}", self.bucket, utf8_percent_encode(key, PATH));
        let response = self
            .head(&path)
            .await
            .map_err(|e| format!("cannot reach the S3 server: {e}"))?;
        let status = response.status().as_u16();
        if status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(format!(
                "the S3 server answered HTTP {status} to HEAD {path}"
            ));
        }
        let header = |name: reqwest::header::HeaderName| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let size = header(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("the S3 server gave no Content-Length for {path}"))?;
        let etag = header(reqwest::header::ETAG)
            .unwrap_or_default()
            .trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_ascii_lowercase();
        Ok(Some(Head { size, etag }))
    }

    /// The `Authorization` header of a SigV4-signed request without a query string: `headers` are
    /// the signed headers with lower-case names, `path` the URI-encoded path.
    pub fn authorization(
        &self,
        now: DateTime<Utc>,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        payload_sha256: &str,
    ) -> String {
        let mut headers = headers.to_vec();
        headers.sort_by_key(|(name, _)| *name);
        let canonical_headers: String = headers
            .iter()
            .map(|(name, value)| format!("{name}:{}\n", value.trim()))
            .collect();
        let signed_headers = headers
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(";");
        let canonical_request =
            format!("{method}\n{path}\n\n{canonical_headers}\n{signed_headers}\n{payload_sha256}");
        let day = now.format("%Y%m%d").to_string();
        let scope = format!("{day}/{}/s3/aws4_request", self.region);
        let string_to_sign = format!(
            "{ALGORITHM}\n{}\n{scope}\n{}",
            amz_date(now),
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        let signature = hmac_hex(
            &signing_key(&self.secret_key.0, &day, &self.region, "s3"),
            string_to_sign.as_bytes(),
        );
        format!(
            "{ALGORITHM} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.access_key
        )
    }
}

/// `host` or `host:port` as the `Host` header carries it.
fn host_header(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

fn amz_date(now: DateTime<Utc>) -> String {
    now.format("%Y%m%dT%H%M%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example of a signed GET Object (first 10 bytes of test.txt).
    #[test]
    fn aws_published_get_object_example() {
        let now = DateTime::parse_from_rfc3339("2013-05-24T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let account = ExternalS3 {
            endpoint: "https://examplebucket.s3.amazonaws.com".parse().unwrap(),
            bucket: "examplebucket".into(),
            region: "us-east-1".into(),
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: Secret("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into()),
            http: reqwest::Client::new(),
        };
        let header = account.authorization(
            now,
            "GET",
            "/test.txt",
            &[
                ("x-amz-date", "20130524T000000Z"),
                ("range", "bytes=0-9"),
                ("host", "examplebucket.s3.amazonaws.com"),
                ("x-amz-content-sha256", EMPTY_SHA256),
            ],
            EMPTY_SHA256,
        );
        assert_eq!(
            header,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn object_paths_are_encoded_as_sigv4_wants() {
        let key = "cc/1/Angebot Müller \"v2\" 100% #1+2~a_b-c.pdf";
        assert_eq!(
            utf8_percent_encode(key, PATH).to_string(),
            "cc/1/Angebot%20M%C3%BCller%20%22v2%22%20100%25%20%231%2B2~a_b-c.pdf"
        );
    }

    #[test]
    fn endpoints_and_buckets_are_checked() {
        let new = |endpoint: &str, bucket: &str| {
            ExternalS3::new(endpoint, bucket, "us-east-1", "ak", Secret("sk".into()))
        };
        let ok = new("http://127.0.0.1:9000", "my-bucket").unwrap();
        assert_eq!(ok.bucket_url(), "http://127.0.0.1:9000/my-bucket/");
        assert_eq!(
            new("http://localhost:9000/", "b.c.d").unwrap().bucket_url(),
            "http://localhost:9000/b.c.d/"
        );
        for (endpoint, bucket, says) in [
            ("http://10.1.2.3:9000", "bucket", "not on loopback"),
            ("https://s3.example.com", "bucket", "not on loopback"),
            ("ftp://127.0.0.1", "bucket", "http://"),
            ("http://127.0.0.1:9000/prefix", "bucket", "without a path"),
            ("not a url", "bucket", "not a URL"),
            (
                "http://127.0.0.1:9000",
                "My_Bucket",
                "not an S3 bucket name",
            ),
            ("http://127.0.0.1:9000", "ab", "not an S3 bucket name"),
        ] {
            let error = new(endpoint, bucket).unwrap_err().to_string();
            assert!(error.contains(says), "{endpoint} {bucket}: {error}");
        }
        let debug = format!("{ok:?}");
        assert!(!debug.contains("\"sk\""), "{debug}");
    }
}
