//! What the two OTLP/HTTP receivers ([`crate::otlp_metrics`] and [`crate::traces`]) share:
//! the body's encoding and compression, the size limit, and errors as OTLP answers them.

use crate::traces::otlp::RpcStatus;
use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;
use serde_json::json;
use std::io::Read;
use strata_proto::error::ApiError;

/// How an OTLP body is encoded, and so its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Protobuf,
    Json,
}

pub(crate) const PROTOBUF: &str = "application/x-protobuf";

fn encoding(headers: &HeaderMap) -> Result<Encoding, String> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(format!(
            "content-type {value:?} is not supported: send application/x-protobuf or application/json"
        )),
    }
}

/// The gRPC code OTLP puts in an error body for an HTTP status.
fn grpc_code(status: StatusCode) -> i32 {
    match status.as_u16() {
        400 | 413 | 415 => 3, // INVALID_ARGUMENT
        401 => 16,            // UNAUTHENTICATED
        403 => 7,             // PERMISSION_DENIED
        503 => 14,            // UNAVAILABLE
        507 => 8,             // RESOURCE_EXHAUSTED
        _ => 13,              // INTERNAL
    }
}

/// An OTLP error: a `google.rpc.Status`, in the request's encoding.
pub(crate) fn error(encoding: Encoding, status: StatusCode, message: String) -> Response {
    let code = grpc_code(status);
    match encoding {
        Encoding::Protobuf => {
            let body = RpcStatus { code, message }.encode_to_vec();
            (
                status,
                [(header::CONTENT_TYPE, HeaderValue::from_static(PROTOBUF))],
                body,
            )
                .into_response()
        }
        Encoding::Json => (
            status,
            axum::Json(json!({"code": code, "message": message})),
        )
            .into_response(),
    }
}

fn too_large(len: String, max: usize) -> String {
    format!(
        "a body of {len} bytes is over the limit of {max} (kv.max_request_bytes): send smaller batches"
    )
}

/// Checks an export before it is decoded: the caller may write (`allowed`), the content type
/// is one OTLP defines, the body is uncompressed or gzip (what the OpenTelemetry Collector
/// sends by default), and it is at most `max` bytes, inflated. Returns the encoding and the
/// plain body, or the error to answer with.
pub(crate) fn accept(
    headers: &HeaderMap,
    allowed: Result<(), ApiError>,
    body: Bytes,
    max: usize,
) -> Result<(Encoding, Bytes), Response> {
    let encoding = encoding(headers);
    let answer_as = *encoding.as_ref().unwrap_or(&Encoding::Json);
    if let Err(e) = allowed {
        let status = StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::FORBIDDEN);
        return Err(error(answer_as, status, e.message));
    }
    let encoding = encoding
        .map_err(|message| error(answer_as, StatusCode::UNSUPPORTED_MEDIA_TYPE, message))?;
    if body.len() > max {
        let message = too_large(body.len().to_string(), max);
        return Err(error(encoding, StatusCode::PAYLOAD_TOO_LARGE, message));
    }
    let coding = headers
        .get(header::CONTENT_ENCODING)
        .map(|c| c.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .unwrap_or_default();
    match coding.as_str() {
        "" | "identity" => Ok((encoding, body)),
        "gzip" => {
            let mut plain = Vec::new();
            let read = flate2::read::GzDecoder::new(body.as_ref())
                .take(max as u64 + 1)
                .read_to_end(&mut plain);
            match read {
                Err(e) => Err(error(
                    encoding,
                    StatusCode::BAD_REQUEST,
                    format!("the gzip body cannot be inflated: {e}"),
                )),
                Ok(_) if plain.len() > max => Err(error(
                    encoding,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    too_large(format!("more than {max}"), max),
                )),
                Ok(_) => Ok((encoding, plain.into())),
            }
        }
        other => Err(error(
            encoding,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content-encoding {other:?} is not supported: send gzip or uncompressed bodies"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn headers(content_type: &str, coding: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        if let Some(c) = coding {
            h.insert(header::CONTENT_ENCODING, c.parse().unwrap());
        }
        h
    }

    fn gzip(bytes: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap().into()
    }

    #[test]
    fn gzip_bodies_are_inflated_within_the_limit() {
        let json = headers("application/json", Some("gzip"));
        let (encoding, body) = accept(&json, Ok(()), gzip(b"{\"a\":1}"), 100).unwrap();
        assert_eq!(
            (encoding, body.as_ref()),
            (Encoding::Json, &b"{\"a\":1}"[..])
        );
        // A small body that inflates past the limit is refused, not inflated in full.
        let bomb = gzip(&vec![0u8; 10_000]);
        assert!(bomb.len() < 100);
        let refused = accept(&json, Ok(()), bomb, 100).unwrap_err();
        assert_eq!(refused.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let garbage = accept(&json, Ok(()), Bytes::from_static(b"not gzip"), 100);
        assert_eq!(garbage.unwrap_err().status(), StatusCode::BAD_REQUEST);
        let plain = headers(PROTOBUF, Some("identity"));
        assert!(accept(&plain, Ok(()), Bytes::from_static(b"x"), 100).is_ok());
        let brotli = headers(PROTOBUF, Some("br"));
        let refused = accept(&brotli, Ok(()), Bytes::from_static(b"x"), 100).unwrap_err();
        assert_eq!(refused.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
}
