//! Static files: a route's `files = { dir = "..." }` action.
//!
//! The request path (after the route's prefix strip) names a file under `dir`; `..`, encoded
//! slashes and symbolic links that leave `dir` are refused. Answers carry `ETag` (size and
//! modification time) and `Last-Modified`, honour `If-None-Match` and `If-Modified-Since` (304)
//! and a single `Range` (206, or 416), and serve a precompressed `NAME.br` or `NAME.gz` when
//! the client accepts it (`Vary: Accept-Encoding`). A directory is served only when the route
//! names an `index` file.

use axum::body::Body;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// A compiled `files` action.
#[derive(Debug, Clone)]
pub struct StaticFiles {
    /// The folder served.
    pub dir: PathBuf,
    /// File served for a directory (`index.html`), or none: directories answer 404.
    pub index: Option<String>,
}

fn status(code: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = code;
    response
}

/// Percent-decodes a path; `None` for an encoded `/` or NUL, or invalid UTF-8.
fn decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            let b = u8::from_str_radix(hex, 16).ok()?;
            if b == b'/' || b == 0 || b == b'\\' {
                return None;
            }
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The file under `dir` that `path` names, if it is there and stays inside `dir`.
fn resolve(dir: &Path, path: &str) -> Option<PathBuf> {
    let decoded = decode(path)?;
    let mut full = dir.to_path_buf();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => return None,
            s if s.contains('\0') => return None,
            s => full.push(s),
        }
    }
    let root = dir.canonicalize().ok()?;
    let real = full.canonicalize().ok()?;
    real.starts_with(&root).then_some(real)
}

fn content_type(path: &Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("txt") => "text/plain; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("wasm") => "application/wasm",
        Some("woff2") => "font/woff2",
        Some("pdf") => "application/pdf",
        Some("xml") => "application/xml",
        _ => "application/octet-stream",
    }
}

fn accepts(headers: &HeaderMap, coding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q == 0.0)
            });
            name.eq_ignore_ascii_case(coding) && !refused
        })
}

/// An HTTP date (IMF-fixdate) for `time`.
fn http_date(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!("{weekday}, {day:02} {name} {year} {h:02}:{m:02}:{s:02} GMT")
}

/// Parses an IMF-fixdate into seconds since the epoch.
fn parse_http_date(text: &str) -> Option<u64> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = months.iter().position(|m| m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<u64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

/// A single byte range of a file of `len` bytes: `Ok(None)` when there is none (or several:
/// the whole file is served), `Err(())` when it cannot be satisfied.
#[allow(clippy::result_unit_err)]
pub fn parse_range(header: &str, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        let suffix: u64 = end.parse().map_err(|_| ())?;
        if suffix == 0 || len == 0 {
            return Err(());
        }
        (len.saturating_sub(suffix), len - 1)
    } else {
        let start: u64 = start.parse().map_err(|_| ())?;
        let end = if end.is_empty() {
            len.checked_sub(1).ok_or(())?
        } else {
            end.parse::<u64>()
                .map_err(|_| ())?
                .min(len.saturating_sub(1))
        };
        if start >= len || start > end {
            return Err(());
        }
        (start, end)
    };
    Ok(Some(range))
}

impl StaticFiles {
    /// Answers `method path` from the folder.
    pub async fn serve(&self, method: &Method, path: &str, headers: &HeaderMap) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            let mut response = status(StatusCode::METHOD_NOT_ALLOWED);
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let Some(mut file) = resolve(&self.dir, path) else {
            return status(StatusCode::NOT_FOUND);
        };
        if file.is_dir() {
            match &self.index {
                Some(index) => file.push(index),
                None => return status(StatusCode::NOT_FOUND),
            }
        }
        if !file.is_file() {
            return status(StatusCode::NOT_FOUND);
        }
        let kind = content_type(&file);
        // A precompressed sibling, when the client takes it.
        let mut encoding = None;
        for (coding, ext) in [("br", "br"), ("gzip", "gz")] {
            let mut name = file.clone().into_os_string();
            name.push(".");
            name.push(ext);
            let sibling = PathBuf::from(name);
            if accepts(headers, coding) && sibling.is_file() {
                file = sibling;
                encoding = Some(coding);
                break;
            }
        }
        let Ok(meta) = tokio::fs::metadata(&file).await else {
            return status(StatusCode::NOT_FOUND);
        };
        let len = meta.len();
        let modified = meta.modified().unwrap_or(UNIX_EPOCH);
        let mtime = modified
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let etag = format!(
            "\"{len:x}-{mtime:x}{}\"",
            encoding.map_or(String::new(), |e| format!("-{e}"))
        );
        let last_modified = http_date(modified);
        let mut response = Response::new(Body::empty());
        {
            let h = response.headers_mut();
            let mut put = |name: header::HeaderName, value: &str| {
                if let Ok(v) = HeaderValue::from_str(value) {
                    h.insert(name, v);
                }
            };
            put(header::CONTENT_TYPE, kind);
            put(header::ETAG, &etag);
            put(header::LAST_MODIFIED, &last_modified);
            put(header::ACCEPT_RANGES, "bytes");
            put(header::VARY, "Accept-Encoding");
            if let Some(coding) = encoding {
                put(header::CONTENT_ENCODING, coding);
            }
        }
        let not_modified = match headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
        {
            Some(tags) => tags
                .split(',')
                .any(|t| t.trim() == "*" || t.trim().trim_start_matches("W/") == etag),
            None => headers
                .get(header::IF_MODIFIED_SINCE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_http_date)
                .is_some_and(|since| {
                    modified
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs())
                        <= since
                }),
        };
        if not_modified {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            return response;
        }
        let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
            // A Range with a stale If-Range gets the whole file.
            Some(_)
                if headers
                    .get(header::IF_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|r| r.trim() != etag && r.trim() != last_modified) =>
            {
                None
            }
            Some(text) => match parse_range(text, len) {
                Ok(range) => range,
                Err(()) => {
                    *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                        response.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return response;
                }
            },
            None => None,
        };
        let (start, count) = match range {
            Some((start, end)) => {
                *response.status_mut() = StatusCode::PARTIAL_CONTENT;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                (start, end - start + 1)
            }
            None => (0, len),
        };
        if let Ok(v) = HeaderValue::from_str(&count.to_string()) {
            response.headers_mut().insert(header::CONTENT_LENGTH, v);
        }
        if method == Method::HEAD {
            return response;
        }
        let Ok(mut handle) = tokio::fs::File::open(&file).await else {
            return status(StatusCode::NOT_FOUND);
        };
        if start > 0 && handle.seek(std::io::SeekFrom::Start(start)).await.is_err() {
            return status(StatusCode::INTERNAL_SERVER_ERROR);
        }
        let stream = tokio_util::io::ReaderStream::new(handle.take(count));
        *response.body_mut() = Body::from_stream(stream);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-500", 100), Ok(Some((0, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=9-3", 100), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
        assert_eq!(parse_range("bytes=x-1", 100), Err(()));
    }

    #[test]
    fn http_dates_round_trip() {
        for secs in [0u64, 784_111_777, 1_700_000_000, 4_102_444_800] {
            let time = UNIX_EPOCH + std::time::Duration::from_secs(secs);
            let text = http_date(time);
            assert_eq!(parse_http_date(&text), Some(secs), "{text}");
        }
        assert_eq!(
            http_date(UNIX_EPOCH + std::time::Duration::from_secs(784_111_777)),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }

    #[test]
    fn paths_never_leave_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        assert!(resolve(dir.path(), "/a.txt").is_some());
        assert!(resolve(dir.path(), "/%61.txt").is_some());
        assert!(resolve(dir.path(), "/../a.txt").is_none());
        assert!(resolve(dir.path(), "/x/%2e%2e/a.txt").is_none());
        assert!(resolve(dir.path(), "/%2fetc%2fpasswd").is_none());
        assert!(resolve(dir.path(), "/missing").is_none());
    }

    #[test]
    fn accept_encoding_honours_q_zero() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip, br;q=0"),
        );
        assert!(accepts(&h, "gzip"));
        assert!(!accepts(&h, "br"));
    }
}
