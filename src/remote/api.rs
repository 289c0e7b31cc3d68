//! API v3 calls: step 1 (the upload form), step 3 (attach), and a record's attachments (to
//! verify an attach whose answer was lost).

use serde_json::Value;

use super::{API_ANSWER_CAP, API_TIMEOUT, Client, RECORD_ANSWER_CAP, RemoteError, read_capped};
use crate::manifest::ReferenceType;

/// Step 1's answer: where and how to upload.
#[derive(Clone, Debug)]
pub struct Form {
    /// The bucket URL to POST to.
    pub url: String,
    /// The form fields to send, in the order to send them, without `key` and `x-ignore-pattern`.
    pub fields: Vec<(String, String)>,
    /// `<contact>/__timestamp__/${filename}`
    pub key_pattern: String,
    /// The answer's top-level timestamp.
    pub timestamp: i64,
    pub storage_left: u64,
}

/// The tutorial's order of the form fields; others go after these and before `key`.
const FIELD_ORDER: [&str; 7] = [
    "acl",
    "success_action_status",
    "policy",
    "x-amz-credential",
    "x-amz-algorithm",
    "x-amz-date",
    "x-amz-signature",
];

impl Form {
    /// The object key for `filename`. Its timestamp part is the answer's timestamp, or, when
    /// `sequence` > 0 (that key is taken), the timestamp in milliseconds plus `sequence`: the key
    /// keeps the documented `<contact>/<timestamp>/<name>` shape and differs in its timestamp.
    pub fn key(&self, filename: &str, sequence: u32) -> String {
        let stamp = match sequence {
            0 => self.timestamp,
            n => self.timestamp * 1000 + i64::from(n % 1000),
        };
        self.key_pattern
            .replace("__timestamp__", &stamp.to_string())
            .replace("${filename}", filename)
    }
}

/// An attachment as a record lists it.
#[derive(Clone, Debug)]
pub struct RemoteAttachment {
    pub id: String,
    pub filename: String,
    pub size: u64,
}

/// Step 3's request.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Attach<'a> {
    pub reference_id: &'a str,
    pub reference_type: ReferenceType,
    pub contact_id: &'a str,
    pub name: &'a str,
    pub key: &'a str,
    pub size: u64,
}

impl Client {
    /// Sends an API request and returns the envelope's `data` (and the whole envelope).
    async fn api(&self, request: reqwest::RequestBuilder) -> Result<Value, RemoteError> {
        self.api_capped(request, API_ANSWER_CAP).await
    }

    /// As `api`, reading at most `cap` bytes of the answer.
    async fn api_capped(
        &self,
        request: reqwest::RequestBuilder,
        cap: usize,
    ) -> Result<Value, RemoteError> {
        let response = request
            .basic_auth(&self.credentials.user_id, Some(self.credentials.api_key()))
            .timeout(API_TIMEOUT)
            .send()
            .await
            .map_err(RemoteError::network)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        let body = read_capped(response, cap, "the API").await?;
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if status == 429 || (status == 403 && json.is_none()) {
            return Err(RemoteError::Throttled {
                status,
                retry_after,
            });
        }
        let Some(json) = json else {
            return Err(RemoteError::Protocol {
                what: "the API",
                detail: format!(
                    "status {status} with a body that is not JSON ({} bytes)",
                    body.len()
                ),
            });
        };
        let text = |k: &str| {
            json.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        if status == 401 {
            return Err(RemoteError::Unauthorized {
                message: text("message"),
            });
        }
        if !(200..300).contains(&status) {
            let error_name = text("error_name");
            let mut message = text("error_message");
            if message.is_empty() {
                message = text("message");
            }
            if let Some(errors) = json
                .get("errors")
                .and_then(Value::as_object)
                .filter(|e| !e.is_empty())
            {
                let details: Vec<String> = errors
                    .iter()
                    .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or(&v.to_string())))
                    .collect();
                message = format!("{message} ({})", details.join("; "));
            }
            if status == 403 && (error_name.contains("storage") || error_name.contains("quota")) {
                return Err(RemoteError::Quota { message });
            }
            return Err(RemoteError::Api {
                status,
                error_name,
                message,
            });
        }
        Ok(json)
    }

    /// Step 1: `GET /attachments/s3_form?contact_id=`.
    pub async fn s3_form(&self, contact_id: &str) -> Result<Form, RemoteError> {
        let request = self
            .http
            .get(self.api_url("/attachments/s3_form"))
            .query(&[("contact_id", contact_id)]);
        let json = self.api(request).await?;
        parse_form(&json).map_err(|detail| RemoteError::Protocol {
            what: "step 1 (s3_form)",
            detail,
        })
    }

    /// Step 3: `POST /attachments`; returns the new attachment's id.
    pub async fn attach(&self, attach: &Attach<'_>) -> Result<String, RemoteError> {
        let body = serde_json::to_vec(attach).expect("a struct of strings and numbers serializes");
        let request = self
            .http
            .post(self.api_url("/attachments"))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let json = self.api(request).await?;
        json.pointer("/data/attachment/id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| RemoteError::Protocol {
                what: "step 3 (attachments)",
                detail: "no data.attachment.id".into(),
            })
    }

    /// The attachments a note, deal, call or meeting lists.
    pub async fn attachments_of(
        &self,
        reference_type: ReferenceType,
        reference_id: &str,
    ) -> Result<Vec<RemoteAttachment>, RemoteError> {
        let path = format!("/{}s/{reference_id}", reference_type.as_str());
        let json = self
            .api_capped(self.http.get(self.api_url(&path)), RECORD_ANSWER_CAP)
            .await?;
        let list = json
            .pointer(&format!("/data/{}/attachments", reference_type.as_str()))
            .and_then(Value::as_array)
            .ok_or_else(|| RemoteError::Protocol {
                what: "a record",
                detail: "no attachments list".into(),
            })?;
        Ok(list
            .iter()
            .filter_map(|a| {
                Some(RemoteAttachment {
                    id: a.get("id")?.as_str()?.to_string(),
                    filename: a.get("filename")?.as_str()?.to_string(),
                    size: a.get("size")?.as_u64()?,
                })
            })
            .collect())
    }
}

fn parse_form(json: &Value) -> Result<Form, String> {
    let data = json.get("data").ok_or("no data")?;
    let url = data
        .get("url")
        .and_then(Value::as_str)
        .ok_or("no data.url")?
        .to_string();
    let fields = data
        .get("fields")
        .and_then(Value::as_object)
        .ok_or("no data.fields")?;
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let key_pattern = fields
        .get("x-ignore-pattern")
        .and_then(Value::as_str)
        .ok_or("no x-ignore-pattern")?
        .to_string();
    if !key_pattern.contains("__timestamp__") || !key_pattern.contains("${filename}") {
        return Err(format!(
            "x-ignore-pattern {key_pattern:?} lacks __timestamp__ or ${{filename}}"
        ));
    }
    let mut ordered: Vec<(String, String)> = Vec::with_capacity(fields.len());
    for name in FIELD_ORDER {
        if let Some(v) = fields.get(name) {
            ordered.push((
                name.to_string(),
                text(v).ok_or_else(|| format!("field {name} is not a string"))?,
            ));
        }
    }
    for (name, v) in fields {
        if FIELD_ORDER.contains(&name.as_str()) || name == "key" || name == "x-ignore-pattern" {
            continue;
        }
        ordered.push((
            name.clone(),
            text(v).ok_or_else(|| format!("field {name} is not a string"))?,
        ));
    }
    let timestamp = json
        .get("timestamp")
        .and_then(Value::as_i64)
        .ok_or("no timestamp")?;
    let storage_left = data
        .get("storage_left")
        .and_then(Value::as_u64)
        .ok_or("no data.storage_left")?;
    Ok(Form {
        url,
        fields: ordered,
        key_pattern,
        timestamp,
        storage_left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_fields_keep_the_tutorial_order_and_unknown_fields_go_before_key() {
        let answer = json!({
            "status": 0, "timestamp": 1697212380,
            "data": {"storage_left": 5, "url": "https://b.example/", "fields": {
                "x-amz-security-token": "tok", "key": "", "x-ignore-pattern": "c/__timestamp__/${filename}",
                "x-amz-signature": "sig", "policy": "pol", "acl": "private", "success_action_status": 201,
                "x-amz-credential": "cred", "x-amz-algorithm": "AWS4-HMAC-SHA256", "x-amz-date": "d"
            }}
        });
        let form = parse_form(&answer).unwrap();
        let names: Vec<&str> = form.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "acl",
                "success_action_status",
                "policy",
                "x-amz-credential",
                "x-amz-algorithm",
                "x-amz-date",
                "x-amz-signature",
                "x-amz-security-token"
            ]
        );
        assert_eq!(form.fields[1].1, "201");
        assert_eq!(form.key("a b.pdf", 0), "c/1697212380/a b.pdf");
        assert_eq!(form.key("a b.pdf", 7), "c/1697212380007/a b.pdf");
    }
}
