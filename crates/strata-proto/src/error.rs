//! The one error shape of every Strata API: `{"code": "...", "message": "..."}`.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A small, stable set of error kinds. Clients branch on these, never on messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or violates a limit (empty key, invalid range, bad JSON).
    BadRequest,
    /// The request body or a key/value is larger than the configured limit.
    PayloadTooLarge,
    /// The route exists but not for this HTTP method.
    MethodNotAllowed,
    /// The thing named does not exist (route, lease, member).
    NotFound,
    /// The thing being created already exists (lease id, member id).
    AlreadyExists,
    /// The requested revision has been compacted away.
    Compacted,
    /// The requested revision is newer than the store's current revision.
    FutureRevision,
    /// The operation is not allowed in the current state (e.g. removing the last voter).
    FailedPrecondition,
    /// The cluster cannot serve the request now (no leader, shutting down); retry later.
    Unavailable,
    /// The deadline passed before the request completed; it may or may not have applied.
    Timeout,
    /// A bug or an unexpected storage failure; someone must look at the logs.
    Internal,
    /// Access control is on and the request carries no valid credential.
    Unauthenticated,
    /// The caller's roles do not allow the request.
    PermissionDenied,
    /// The node's disk is below its reserve (`kv.disk_reserve`): it refuses writes and serves
    /// reads until space is freed.
    NoSpace,
}

impl ErrorCode {
    /// Returns the HTTP status that carries this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadyExists => 409,
            ErrorCode::Compacted => 410,
            ErrorCode::FutureRevision => 400,
            ErrorCode::FailedPrecondition => 412,
            ErrorCode::Unavailable => 503,
            ErrorCode::Timeout => 504,
            ErrorCode::Internal => 500,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::PermissionDenied => 403,
            ErrorCode::NoSpace => 507,
        }
    }

    /// Returns true when the same request may succeed if retried unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Unavailable)
    }

    /// Returns the snake_case name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadyExists => "already_exists",
            ErrorCode::Compacted => "compacted",
            ErrorCode::FutureRevision => "future_revision",
            ErrorCode::FailedPrecondition => "failed_precondition",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NoSpace => "no_space",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error as every API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// What kind of error this is.
    pub code: ErrorCode,
    /// A lowercase sentence for people, saying what went wrong and, where possible, what to do.
    pub message: String,
}

impl ApiError {
    /// Builds an error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// Shorthand for [`ErrorCode::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// Shorthand for [`ErrorCode::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// Shorthand for [`ErrorCode::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// Shorthand for [`ErrorCode::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}
