//! The Nacos 2.x gRPC wire: generated messages and services (`build.rs`), and the JSON
//! envelope every payload carries. A payload's `metadata.type` names the request or response
//! class and its `body.value` is that object as JSON; this module turns payloads into
//! [`Incoming`] requests and builds response and push payloads.
//!
//! Responses carry `resultCode` (200 or 500), `errorCode` (0 on success, else one of the
//! `ERROR_*` codes Nacos uses), `message` and the `requestId` of the request they answer.

use serde_json::{json, Value};
use std::collections::HashMap;

/// Generated messages (`Payload`, `Metadata`) and the `Request` and `BiRequestStream`
/// services. The proto has no package, as Nacos's, so prost names the file `_`.
#[allow(
    missing_docs,
    non_camel_case_types,
    unused_qualifications,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// Nacos's `errorCode` for a bad parameter.
pub const ERROR_BAD_REQUEST: u32 = 400;
/// Nacos's `errorCode` when the caller may not do this.
pub const ERROR_FORBIDDEN: u32 = 403;
/// Nacos's `errorCode` for a failure of the server.
pub const ERROR_SERVER: u32 = 500;
/// Nacos's `errorCode` for a config that does not exist (`CONFIG_NOT_FOUND`).
pub const ERROR_CONFIG_NOT_FOUND: u32 = 300;
/// Nacos's `errorCode` for a request on a connection that did not set up (`UN_REGISTER`).
pub const ERROR_UNREGISTERED: u32 = 301;
/// Nacos's `errorCode` for a request type no handler knows (`NO_HANDLER`).
pub const ERROR_NO_HANDLER: u32 = 302;

/// A decoded payload.
#[derive(Debug)]
pub struct Incoming {
    /// The class name in `metadata.type`, e.g. `ConfigQueryRequest`.
    pub kind: String,
    /// The JSON body, always an object.
    pub body: Value,
    /// `metadata.headers` (the `accessToken` among them).
    pub headers: HashMap<String, String>,
}

impl Incoming {
    /// Decodes a payload; an error names what is wrong with it, for the error response.
    pub fn decode(payload: &pb::Payload) -> Result<Incoming, String> {
        let metadata = payload
            .metadata
            .as_ref()
            .ok_or_else(|| "payload has no metadata".to_string())?;
        if metadata.r#type.is_empty() {
            return Err("payload has no type".into());
        }
        let body: Value = match &payload.body {
            Some(any) if !any.value.is_empty() => serde_json::from_slice(&any.value)
                .map_err(|e| format!("body of {} is not JSON: {e}", metadata.r#type))?,
            _ => json!({}),
        };
        if !body.is_object() {
            return Err(format!("body of {} is not a JSON object", metadata.r#type));
        }
        Ok(Incoming {
            kind: metadata.r#type.clone(),
            body,
            headers: metadata.headers.clone(),
        })
    }

    /// The request's `requestId` ("" when absent).
    pub fn request_id(&self) -> String {
        self.text("requestId")
    }

    /// A string field, "" when absent or not a string.
    pub fn text(&self, field: &str) -> String {
        self.body
            .get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    }

    /// An integer field, `default` when absent or not an integer (Nacos clients send
    /// numbers; a number in a string is read too).
    pub fn integer(&self, field: &str, default: i64) -> i64 {
        match self.body.get(field) {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(default),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(default),
            _ => default,
        }
    }

    /// A boolean field, `default` when absent or not a boolean.
    pub fn flag(&self, field: &str, default: bool) -> bool {
        self.body
            .get(field)
            .and_then(Value::as_bool)
            .unwrap_or(default)
    }

    /// The access token, from the `accessToken` header (as Nacos clients send it).
    pub fn token(&self) -> Option<&str> {
        self.headers
            .get("accessToken")
            .map(String::as_str)
            .filter(|t| !t.is_empty())
    }
}

/// A payload of class `kind` with `body` as its JSON.
pub fn payload(kind: &str, body: &Value) -> pb::Payload {
    pb::Payload {
        metadata: Some(pb::Metadata {
            r#type: kind.to_string(),
            client_ip: String::new(),
            headers: HashMap::new(),
        }),
        body: Some(prost_types::Any {
            type_url: String::new(),
            value: serde_json::to_vec(body).unwrap_or_default(),
        }),
    }
}

/// A successful response of class `kind` to request `request_id`, with the fields of
/// `fields` (an object) added.
pub fn success(kind: &str, request_id: &str, fields: Value) -> pb::Payload {
    let mut body = json!({
        "resultCode": 200, "errorCode": 0, "message": "", "requestId": request_id,
    });
    merge(&mut body, fields);
    payload(kind, &body)
}

/// A failed response of class `kind` to request `request_id`.
pub fn failure(kind: &str, request_id: &str, error_code: u32, message: &str) -> pb::Payload {
    payload(
        kind,
        &json!({
            "resultCode": 500, "errorCode": error_code, "message": message,
            "requestId": request_id,
        }),
    )
}

/// A server push (a request from the server) of class `kind`, with `fields` added.
pub fn push(kind: &str, request_id: &str, module: &str, fields: Value) -> pb::Payload {
    let mut body = json!({"headers": {}, "requestId": request_id, "module": module});
    merge(&mut body, fields);
    payload(kind, &body)
}

/// Copies the fields of object `extra` into object `into`.
fn merge(into: &mut Value, extra: Value) {
    if let (Some(target), Value::Object(fields)) = (into.as_object_mut(), extra) {
        target.extend(fields);
    }
}

/// The response class answering request class `kind` (`ErrorResponse` for one no handler
/// knows), as Nacos names them.
pub fn response_kind(kind: &str) -> &'static str {
    match kind {
        "ServerCheckRequest" => "ServerCheckResponse",
        "HealthCheckRequest" => "HealthCheckResponse",
        "ConfigQueryRequest" => "ConfigQueryResponse",
        "ConfigPublishRequest" => "ConfigPublishResponse",
        "ConfigRemoveRequest" => "ConfigRemoveResponse",
        "ConfigBatchListenRequest" => "ConfigChangeBatchListenResponse",
        "InstanceRequest" | "PersistentInstanceRequest" => "InstanceResponse",
        "BatchInstanceRequest" => "BatchInstanceResponse",
        "ServiceQueryRequest" => "QueryServiceResponse",
        "SubscribeServiceRequest" => "SubscribeServiceResponse",
        "ServiceListRequest" => "ServiceListResponse",
        _ => "ErrorResponse",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw(kind: &str, value: &[u8]) -> pb::Payload {
        pb::Payload {
            metadata: Some(pb::Metadata {
                r#type: kind.into(),
                client_ip: String::new(),
                headers: HashMap::new(),
            }),
            body: Some(prost_types::Any {
                type_url: String::new(),
                value: value.to_vec(),
            }),
        }
    }

    #[test]
    fn decodes_a_request_and_refuses_garbage() {
        let ok = Incoming::decode(&raw(
            "ConfigQueryRequest",
            br#"{"dataId":"a","requestId":"7"}"#,
        ))
        .unwrap();
        assert_eq!(ok.kind, "ConfigQueryRequest");
        assert_eq!(ok.text("dataId"), "a");
        assert_eq!(ok.request_id(), "7");
        assert_eq!(ok.text("missing"), "");
        let paged = Incoming::decode(&raw(
            "ServiceListRequest",
            br#"{"pageNo":2,"pageSize":"5","selector":null,"big":1e300}"#,
        ))
        .unwrap();
        assert_eq!(paged.integer("pageNo", 1), 2);
        assert_eq!(paged.integer("pageSize", 10), 5);
        assert_eq!(paged.integer("selector", 7), 7);
        assert_eq!(paged.integer("big", 7), 7);
        assert_eq!(paged.integer("missing", 7), 7);
        assert!(Incoming::decode(&raw("X", b"not json")).is_err());
        assert!(Incoming::decode(&raw("X", b"[1]")).is_err());
        assert!(Incoming::decode(&raw("", b"{}")).is_err());
        assert!(Incoming::decode(&pb::Payload::default()).is_err());
        // An empty body is an empty object (ServerCheckRequest may send one).
        assert!(Incoming::decode(&raw("ServerCheckRequest", b"")).is_ok());
    }

    #[test]
    fn responses_carry_codes_and_the_request_id() {
        let p = success("ServerCheckResponse", "9", json!({"connectionId": "c"}));
        let body: Value = serde_json::from_slice(&p.body.unwrap().value).unwrap();
        assert_eq!(body["resultCode"], 200);
        assert_eq!(body["requestId"], "9");
        assert_eq!(body["connectionId"], "c");
        let p = failure("ErrorResponse", "", ERROR_NO_HANDLER, "no");
        let body: Value = serde_json::from_slice(&p.body.unwrap().value).unwrap();
        assert_eq!(body["resultCode"], 500);
        assert_eq!(body["errorCode"], 302);
        assert_eq!(response_kind("Nonsense"), "ErrorResponse");
    }
}
