//! AWS Signature Version 4 for browser-based POST uploads: signing the policies the emulator hands
//! out, and checking an upload against its policy the way S3 does.
//!
//! S3 checks, in this order: the algorithm and the credential's scope, the signature over the
//! base64 policy, the policy's expiration, each condition (exact match, `starts-with`,
//! `content-length-range`), and that no form field is left without a condition.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The hex HMAC-SHA256 of `data`: a SigV4 signature when `key` is a signing key.
pub fn hmac_hex(key: &[u8], data: &[u8]) -> String {
    hex::encode(hmac(key, data))
}

/// The SigV4 signing key for one day, region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

/// The signature of a base64 policy: the hex HMAC of the policy text under the signing key.
pub fn sign_policy(secret: &str, date: &str, region: &str, policy_b64: &str) -> String {
    hmac_hex(
        &signing_key(secret, date, region, "s3"),
        policy_b64.as_bytes(),
    )
}

/// Whether `signature` is the signature of `policy_b64`, compared in constant time.
pub fn verify_policy(
    secret: &str,
    date: &str,
    region: &str,
    policy_b64: &str,
    signature: &str,
) -> bool {
    let Ok(given) = hex::decode(signature) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(&signing_key(secret, date, region, "s3"))
        .expect("any key length");
    mac.update(policy_b64.as_bytes());
    mac.verify_slice(&given).is_ok()
}

/// The S3 account the emulator signs forms for.
#[derive(Clone, Debug)]
pub struct Signer {
    pub access_key: String,
    pub secret: String,
    pub region: String,
    pub bucket: String,
}

/// A signed upload form: the fields of step 1's answer that S3 checks.
#[derive(Clone, Debug)]
pub struct Form {
    pub policy: String,
    pub credential: String,
    pub date: String,
    pub signature: String,
}

impl Signer {
    /// Signs a policy that lets the holder upload one file of at most `max_size` bytes under
    /// `key_prefix` until `expiration`.
    pub fn form(
        &self,
        now: DateTime<Utc>,
        expiration: DateTime<Utc>,
        key_prefix: &str,
        max_size: u64,
    ) -> Form {
        let day = now.format("%Y%m%d").to_string();
        let date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let credential = format!("{}/{day}/{}/s3/aws4_request", self.access_key, self.region);
        let policy = json!({
            "expiration": expiration.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            "conditions": [
                {"bucket": self.bucket},
                {"acl": "private"},
                {"success_action_status": "201"},
                ["starts-with", "$key", key_prefix],
                ["starts-with", "$filename", ""],
                ["content-length-range", 0, max_size],
                {"x-amz-algorithm": ALGORITHM},
                {"x-amz-credential": credential},
                {"x-amz-date": date},
            ]
        });
        let policy = BASE64.encode(policy.to_string());
        let signature = sign_policy(&self.secret, &day, &self.region, &policy);
        Form {
            policy,
            credential,
            date,
            signature,
        }
    }
}

/// What SigV4 leaves unencoded in a query or a path segment: RFC 3986's unreserved characters.
const SIGV4_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// How long a presigned GET may be valid, as S3 allows: a week.
const MAX_PRESIGNED_SECONDS: u64 = 604_800;

/// SigV4's canonical query string: names and values URI-encoded, sorted by name.
fn canonical_query(pairs: &[(&str, &str)]) -> String {
    let mut encoded: Vec<(String, String)> = pairs
        .iter()
        .map(|(n, v)| {
            (
                percent_encoding::utf8_percent_encode(n, SIGV4_ENCODE).to_string(),
                percent_encoding::utf8_percent_encode(v, SIGV4_ENCODE).to_string(),
            )
        })
        .collect();
    encoded.sort();
    encoded
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The signature of a presigned GET of `path` (URI-encoded) on `host`, whose canonical query
/// (without the signature) is `query`.
fn presigned_signature(signer: &Signer, path: &str, host: &str, query: &str, date: &str) -> String {
    let day = date.get(..8).unwrap_or_default();
    let canonical = format!("GET\n{path}\n{query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD");
    let string_to_sign = format!(
        "{ALGORITHM}\n{date}\n{day}/{}/s3/aws4_request\n{}",
        signer.region,
        hex::encode(Sha256::digest(canonical.as_bytes()))
    );
    hmac_hex(
        &signing_key(&signer.secret, day, &signer.region, "s3"),
        string_to_sign.as_bytes(),
    )
}

/// `host` or `host:port`, as the `Host` header carries it.
fn host_of(url: &url::Url) -> String {
    match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    }
}

impl Signer {
    /// A presigned GET of `object_url` (absolute, its path URI-encoded), valid for `expires`
    /// seconds from `now`: SigV4 query-string authentication, as S3 checks it.
    pub fn presign_get(&self, object_url: &str, now: DateTime<Utc>, expires: u64) -> String {
        let Ok(mut url) = url::Url::parse(object_url) else {
            return object_url.to_string();
        };
        url.set_query(None);
        let date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let credential = format!(
            "{}/{}/{}/s3/aws4_request",
            self.access_key,
            now.format("%Y%m%d"),
            self.region
        );
        let expires = expires.min(MAX_PRESIGNED_SECONDS).to_string();
        let query = canonical_query(&[
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", &credential),
            ("X-Amz-Date", &date),
            ("X-Amz-Expires", &expires),
            ("X-Amz-SignedHeaders", "host"),
        ]);
        let signature = presigned_signature(self, url.path(), &host_of(&url), &query, &date);
        format!("{url}?{query}&X-Amz-Signature={signature}")
    }

    /// Checks a presigned GET of `path` (as received, URI-encoded) on `host`, with its decoded
    /// query `pairs`, as S3 does: the credential's scope, the signature, the expiry.
    pub fn check_presigned_get(
        &self,
        path: &str,
        host: &str,
        pairs: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<(), Refusal> {
        let get = |name: &str| {
            pairs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        let (Some(signature), Some(credential), Some(date), Some(expires)) = (
            get("X-Amz-Signature"),
            get("X-Amz-Credential"),
            get("X-Amz-Date"),
            get("X-Amz-Expires"),
        ) else {
            return Err(Refusal::new(
                "AuthorizationQueryParametersError",
                400,
                "Query-string authentication requires the X-Amz-Algorithm, X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and X-Amz-Expires parameters.",
            ));
        };
        let scope: Vec<&str> = credential.split('/').collect();
        if scope.first() != Some(&self.access_key.as_str())
            || scope.get(2) != Some(&self.region.as_str())
        {
            return Err(Refusal::denied(
                "The AWS Access Key Id you provided does not exist in our records.",
            ));
        }
        let others: Vec<(&str, &str)> = pairs
            .iter()
            .filter(|(n, _)| n != "X-Amz-Signature")
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let expected = presigned_signature(self, path, host, &canonical_query(&others), date);
        // Compared in constant time, as every signature here.
        let given = signature.to_ascii_lowercase();
        let matches = given.len() == expected.len()
            && given
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !matches {
            return Err(Refusal::new(
                "SignatureDoesNotMatch",
                403,
                "The request signature we calculated does not match the signature you provided.",
            ));
        }
        let signed_at = chrono::NaiveDateTime::parse_from_str(date, "%Y%m%dT%H%M%SZ")
            .map(|t| t.and_utc())
            .map_err(|_| {
                Refusal::new(
                    "AuthorizationQueryParametersError",
                    400,
                    "X-Amz-Date must be in the ISO8601 Long Format.",
                )
            })?;
        let seconds = expires
            .parse::<u64>()
            .ok()
            .filter(|s| *s <= MAX_PRESIGNED_SECONDS)
            .ok_or_else(|| {
                Refusal::new(
                    "AuthorizationQueryParametersError",
                    400,
                    "X-Amz-Expires must be a number of seconds up to 604800.",
                )
            })?;
        if now > signed_at + chrono::Duration::seconds(seconds as i64) {
            return Err(Refusal::denied("Request has expired"));
        }
        Ok(())
    }
}

/// Why S3 refuses an upload: its error code, HTTP status and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, status: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            status,
            message: message.into(),
        }
    }

    fn denied(message: impl Into<String>) -> Self {
        Self::new("AccessDenied", 403, message)
    }
}

/// The checked parts of a policy that still apply while the file streams in.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub min_size: u64,
    pub max_size: u64,
}

/// Checks the form fields that came before the file against the signed policy. `fields` holds
/// the names in lower case, in the order they came; `bucket` is the bucket of the URL.
///
/// The checks come in S3's order, which decides which error a broken form gets: the required
/// fields, the signature (`check_signature`), the policy and its expiration
/// (`policy_conditions`), each condition (`check_condition`), the fields no condition
/// names (`check_covered`).
pub fn check_form(
    signer: &Signer,
    fields: &[(String, String)],
    bucket: &str,
    now: DateTime<Utc>,
) -> Result<Limits, Refusal> {
    let get = |name: &str| field(fields, name);
    let require = |name: &str| {
        get(name).ok_or_else(|| {
            Refusal::new(
                "InvalidArgument",
                400,
                format!("Bucket POST must contain a field named '{name}'."),
            )
        })
    };
    let policy_b64 = require("policy")?;
    let signed = Signed {
        algorithm: require("x-amz-algorithm")?,
        credential: require("x-amz-credential")?,
        date: require("x-amz-date")?,
        signature: require("x-amz-signature")?,
        policy_b64,
    };
    require("key")?;
    check_signature(signer, &signed)?;
    let conditions = policy_conditions(policy_b64, now)?;

    let value_of = |name: &str| -> Option<&str> {
        if name == "bucket" {
            Some(bucket)
        } else {
            get(name)
        }
    };
    let mut covered: Vec<String> = Vec::new();
    let mut limits = Limits {
        min_size: 0,
        max_size: u64::MAX,
    };
    for condition in &conditions {
        match check_condition(condition, &value_of)? {
            Met::Field(name) => covered.push(name),
            Met::Size(size) => limits = size,
        }
    }
    check_covered(fields, &covered)?;
    Ok(limits)
}

/// The value of the form field `name` (in lower case), if the form has it.
fn field<'f>(fields: &'f [(String, String)], name: &str) -> Option<&'f str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The form fields that sign a policy, as the form gives them.
struct Signed<'f> {
    algorithm: &'f str,
    credential: &'f str,
    date: &'f str,
    signature: &'f str,
    policy_b64: &'f str,
}

/// Whether the form is signed as S3 takes it: the algorithm, the credential's scope (its day,
/// service and terminator), the access key, the region, then the signature over the policy,
/// each refused with S3's own error, in that order.
fn check_signature(signer: &Signer, signed: &Signed) -> Result<(), Refusal> {
    let Signed {
        algorithm,
        credential,
        date,
        signature,
        policy_b64,
    } = *signed;
    if algorithm != ALGORITHM {
        return Err(Refusal::new(
            "InvalidArgument",
            400,
            format!("Only {ALGORITHM} is supported for x-amz-algorithm, not '{algorithm}'."),
        ));
    }
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key, day, region, service, terminator] = scope[..] else {
        return Err(Refusal::new(
            "InvalidArgument",
            400,
            format!("Invalid credential: {credential}"),
        ));
    };
    if service != "s3" || terminator != "aws4_request" || day.len() != 8 || !date.starts_with(day) {
        return Err(Refusal::new(
            "InvalidArgument",
            400,
            format!("Invalid credential scope: {credential}"),
        ));
    }
    if access_key != signer.access_key {
        return Err(Refusal::new(
            "InvalidAccessKeyId",
            403,
            "The AWS Access Key Id you provided does not exist in our records.",
        ));
    }
    if region != signer.region {
        return Err(Refusal::new(
            "AuthorizationQueryParametersError",
            400,
            format!(
                "Error parsing the X-Amz-Credential parameter; the region '{region}' is wrong; expecting '{}'",
                signer.region
            ),
        ));
    }
    if !verify_policy(&signer.secret, day, region, policy_b64, signature) {
        return Err(Refusal::denied(
            "Invalid according to Policy: Policy Signature does not match",
        ));
    }
    Ok(())
}

/// The conditions of a signed policy that has not expired at `now`: refused when the policy is
/// not base64 JSON, has no valid `expiration`, is past it, or has no `conditions` list.
fn policy_conditions(policy_b64: &str, now: DateTime<Utc>) -> Result<Vec<Value>, Refusal> {
    let mut policy: Value = BASE64
        .decode(policy_b64)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| {
            Refusal::new(
                "InvalidPolicyDocument",
                400,
                "Invalid Policy: Invalid JSON.",
            )
        })?;
    let expiration = policy["expiration"]
        .as_str()
        .and_then(|e| DateTime::parse_from_rfc3339(e).ok())
        .ok_or_else(|| {
            Refusal::new(
                "InvalidPolicyDocument",
                400,
                "Invalid Policy: Invalid 'expiration' value.",
            )
        })?;
    if now > expiration {
        return Err(Refusal::denied(
            "Invalid according to Policy: Policy expired.",
        ));
    }
    match policy.get_mut("conditions").map(Value::take) {
        Some(Value::Array(conditions)) => Ok(conditions),
        _ => Err(Refusal::new(
            "InvalidPolicyDocument",
            400,
            "Invalid Policy: Missing 'conditions'.",
        )),
    }
}

/// What one condition of a policy, met, says.
enum Met {
    /// The field it names (in lower case) has the value it asks for.
    Field(String),
    /// `content-length-range`: the file's size must be within these.
    Size(Limits),
}

/// Whether the form meets one condition: `{"field": "value"}`, `["eq", "$field", "value"]`,
/// `["starts-with", "$field", "prefix"]` or `["content-length-range", min, max]`. A condition
/// the form fails is `AccessDenied`; one of another shape makes the policy invalid.
fn check_condition<'f>(
    condition: &Value,
    value_of: &impl Fn(&str) -> Option<&'f str>,
) -> Result<Met, Refusal> {
    let failed = || {
        Refusal::denied(format!(
            "Invalid according to Policy: Policy Condition failed: {condition}"
        ))
    };
    let invalid = || {
        Refusal::new(
            "InvalidPolicyDocument",
            400,
            format!("Invalid Policy: Invalid condition {condition}"),
        )
    };
    match condition {
        Value::Object(map) if map.len() == 1 => {
            let (name, expected) = map.iter().next().expect("one entry");
            let name = name.to_ascii_lowercase();
            let expected = scalar(expected).ok_or_else(failed)?;
            if value_of(&name) != Some(expected.as_str()) {
                return Err(failed());
            }
            Ok(Met::Field(name))
        }
        Value::Array(items) => match items.first().and_then(Value::as_str) {
            Some(op @ ("eq" | "starts-with")) => {
                let (Some(field), Some(expected)) = (
                    items.get(1).and_then(Value::as_str),
                    items.get(2).and_then(scalar),
                ) else {
                    return Err(invalid());
                };
                let name = field.trim_start_matches('$').to_ascii_lowercase();
                let actual = value_of(&name).ok_or_else(failed)?;
                let ok = if op == "eq" {
                    actual == expected
                } else {
                    actual.starts_with(&expected)
                };
                if !ok {
                    return Err(failed());
                }
                Ok(Met::Field(name))
            }
            Some("content-length-range") => {
                let (Some(min), Some(max)) = (
                    items.get(1).and_then(Value::as_u64),
                    items.get(2).and_then(Value::as_u64),
                ) else {
                    return Err(invalid());
                };
                Ok(Met::Size(Limits {
                    min_size: min,
                    max_size: max,
                }))
            }
            _ => Err(invalid()),
        },
        _ => Err(invalid()),
    }
}

/// Whether every field of the form is named by a condition (`covered`), except `policy`,
/// `x-amz-signature`, `file` and any `x-ignore-` field; S3 refuses the others as extra.
fn check_covered(fields: &[(String, String)], covered: &[String]) -> Result<(), Refusal> {
    let exempt = ["policy", "x-amz-signature", "file"];
    let extra: Vec<&str> = fields
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| {
            !exempt.contains(n) && !n.starts_with("x-ignore-") && !covered.iter().any(|c| c == n)
        })
        .collect();
    if !extra.is_empty() {
        return Err(Refusal::denied(format!(
            "Invalid according to Policy: Extra input fields: {}",
            extra.join(", ")
        )));
    }
    Ok(())
}

/// A condition's value as text: policies write `success_action_status` as `"201"` or `201`.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's published example of a presigned GET (query-string authentication, "test.txt").
    #[test]
    fn presigned_get_matches_aws_published_example() {
        let signer = Signer {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
            bucket: "examplebucket".into(),
        };
        let now = DateTime::parse_from_rfc3339("2013-05-24T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let url = signer.presign_get(
            "https://examplebucket.s3.amazonaws.com/test.txt",
            now,
            86400,
        );
        assert!(
            url.ends_with(
                "X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
            ),
            "{url}"
        );
        let parsed = url::Url::parse(&url).unwrap();
        let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
        let host = "examplebucket.s3.amazonaws.com";
        assert!(
            signer
                .check_presigned_get("/test.txt", host, &pairs, now)
                .is_ok()
        );
        assert_eq!(
            signer
                .check_presigned_get("/other.txt", host, &pairs, now)
                .unwrap_err()
                .code,
            "SignatureDoesNotMatch"
        );
        let later = now + chrono::Duration::seconds(86401);
        assert_eq!(
            signer
                .check_presigned_get("/test.txt", host, &pairs, later)
                .unwrap_err()
                .message,
            "Request has expired"
        );
    }
    use chrono::TimeZone;

    /// AWS's published example of a SigV4 POST policy and its signature.
    #[test]
    fn aws_published_example_signature() {
        let policy = "eyJleHBpcmF0aW9uIjoiMjAxMy0wOC0wNlQxMjowMDowMC4wMDBaIiwiY29uZGl0aW9ucyI6W3siYWNsIjoicHVibGljLXJlYWQifSxbInN0YXJ0cy13aXRoIiwiJENvbnRlbnQtVHlwZSIsImltYWdlLyJdLFsic3RhcnRzLXdpdGgiLCIka2V5IiwidXNlci91c2VyMS8iXSxbInN0YXJ0cy13aXRoIiwiJHgtYW16LW1ldGEtdGFnIiwiIl0seyJ4LWFtei1tZXRhLXV1aWQiOiIxNDM2NTEyMzY1MTI3NCJ9LHsiYnVja2V0IjoiZXhhbXBsZWJ1Y2tldCJ9LHsieC1hbXotYWxnb3JpdGhtIjoiQVdTNC1ITUFDLVNIQTI1NiJ9LHsieC1hbXotY3JlZGVudGlhbCI6IkFLSUFJT1NGT0ROTjdFWEFNUExFLzIwMTMwODA2L3VzLWVhc3QtMS9zMy9hd3M0X3JlcXVlc3QifSx7IngtYW16LWRhdGUiOiIyMDEzMDgwNlQxMjAwMDBaIn1dfQ==";
        let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        let expected = "5bc8a7be4a6fc6445b94d0f4096f8cf3dfa00303529f8a68ea7dc0c23bb83cd9";
        assert_eq!(
            sign_policy(secret, "20130806", "us-east-1", policy),
            expected
        );
        assert!(verify_policy(
            secret,
            "20130806",
            "us-east-1",
            policy,
            expected
        ));
        assert!(!verify_policy(
            secret,
            "20130807",
            "us-east-1",
            policy,
            expected
        ));

        // And the whole check accepts the example's own form before its expiration.
        let signer = Signer {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret: secret.into(),
            region: "us-east-1".into(),
            bucket: "examplebucket".into(),
        };
        let fields: Vec<(String, String)> = [
            ("key", "user/user1/photo.jpg"),
            ("acl", "public-read"),
            ("content-type", "image/jpeg"),
            ("x-amz-meta-uuid", "14365123651274"),
            ("x-amz-meta-tag", ""),
            (
                "x-amz-credential",
                "AKIAIOSFODNN7EXAMPLE/20130806/us-east-1/s3/aws4_request",
            ),
            ("x-amz-algorithm", ALGORITHM),
            ("x-amz-date", "20130806T120000Z"),
            ("policy", policy),
            ("x-amz-signature", expected),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        let before = Utc.with_ymd_and_hms(2013, 8, 6, 11, 0, 0).unwrap();
        assert!(check_form(&signer, &fields, "examplebucket", before).is_ok());
        let after = Utc.with_ymd_and_hms(2013, 8, 6, 12, 0, 1).unwrap();
        let refusal = check_form(&signer, &fields, "examplebucket", after).unwrap_err();
        assert_eq!((refusal.code, refusal.status), ("AccessDenied", 403));
        assert!(refusal.message.contains("Policy expired"));
    }

    fn signer() -> Signer {
        Signer {
            access_key: "AKIDEMU".into(),
            secret: "s3cr3t".into(),
            region: "eu-west-1".into(),
            bucket: "b".into(),
        }
    }

    fn fields_for(form: &Form, key: &str) -> Vec<(String, String)> {
        [
            ("acl", "private"),
            ("success_action_status", "201"),
            ("policy", &form.policy),
            ("x-amz-credential", &form.credential),
            ("x-amz-algorithm", ALGORITHM),
            ("x-amz-date", &form.date),
            ("x-amz-signature", &form.signature),
            ("key", key),
            ("filename", "a.pdf"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn own_forms_pass_and_each_tampering_fails() {
        let s = signer();
        let now = Utc::now();
        let form = s.form(now, now + chrono::Duration::hours(1), "c1/", 100);
        let ok = fields_for(&form, "c1/123/a.pdf");
        let limits = check_form(&s, &ok, "b", now).unwrap();
        assert_eq!((limits.min_size, limits.max_size), (0, 100));

        let mut wrong_key = ok.clone();
        wrong_key[7].1 = "c2/123/a.pdf".into();
        assert!(
            check_form(&s, &wrong_key, "b", now)
                .unwrap_err()
                .message
                .contains("Condition failed")
        );

        let mut bad_sig = ok.clone();
        bad_sig[6].1 = "00".repeat(32);
        assert!(
            check_form(&s, &bad_sig, "b", now)
                .unwrap_err()
                .message
                .contains("Signature does not match")
        );

        let mut extra = ok.clone();
        extra.push(("x-amz-meta-x".into(), "1".into()));
        assert!(
            check_form(&s, &extra, "b", now)
                .unwrap_err()
                .message
                .contains("Extra input fields: x-amz-meta-x")
        );

        let mut ignored = ok.clone();
        ignored.push((
            "x-ignore-pattern".into(),
            "c1/__timestamp__/${filename}".into(),
        ));
        assert!(check_form(&s, &ignored, "b", now).is_ok());

        assert_eq!(
            check_form(&s, &ok, "other", now).unwrap_err().code,
            "AccessDenied"
        );
        let missing: Vec<_> = ok.iter().filter(|(n, _)| n != "key").cloned().collect();
        assert_eq!(
            check_form(&s, &missing, "b", now).unwrap_err().code,
            "InvalidArgument"
        );
    }
}
