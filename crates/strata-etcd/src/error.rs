//! The one place where errors become gRPC statuses, with etcd's codes and messages.
//!
//! etcd clients recognise server errors by their exact message (clientv3's `rpctypes` keeps a
//! table from message to error, and `etcdctl` prints it), so the texts below are etcd's,
//! character for character. Errors etcd has no counterpart for keep Strata's message behind
//! an `etcdserver: ` prefix.

use strata_proto::error::{ApiError, ErrorCode};
use tonic::{Code, Status};

/// What a failed request was about. Some codes carry a different etcd message depending on
/// it: `not_found` is "requested lease not found" for a lease but "member not found" for a
/// member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Subject {
    /// Keys: range, put, delete, txn, compact, watch.
    Key,
    /// Leases.
    Lease,
    /// Cluster members.
    Member,
    /// Locks (v3lock): their errors are mostly about the owning lease.
    Lock,
    /// Elections (v3election).
    Election,
}

/// Builds an etcd error status.
fn etcd(code: Code, message: &'static str) -> Status {
    Status::new(code, message)
}

/// `etcdserver: key is not provided`.
pub(crate) fn empty_key() -> Status {
    etcd(Code::InvalidArgument, "etcdserver: key is not provided")
}

/// `etcdserver: key not found` (a put with `ignore_value` or `ignore_lease` on a missing key).
pub(crate) fn key_not_found() -> Status {
    etcd(Code::InvalidArgument, "etcdserver: key not found")
}

/// `etcdserver: value is provided` (`ignore_value` together with a value).
pub(crate) fn value_provided() -> Status {
    etcd(Code::InvalidArgument, "etcdserver: value is provided")
}

/// `etcdserver: lease is provided` (`ignore_lease` together with a lease).
pub(crate) fn lease_provided() -> Status {
    etcd(Code::InvalidArgument, "etcdserver: lease is provided")
}

/// `etcdserver: too many operations in txn request`.
pub(crate) fn too_many_ops() -> Status {
    etcd(
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    )
}

/// `etcdserver: duplicate key given in txn request`.
pub(crate) fn duplicate_key() -> Status {
    etcd(
        Code::InvalidArgument,
        "etcdserver: duplicate key given in txn request",
    )
}

/// `etcdserver: invalid sort option`.
pub(crate) fn invalid_sort_option() -> Status {
    etcd(Code::InvalidArgument, "etcdserver: invalid sort option")
}

/// `etcdserver: request is too large`.
pub(crate) fn request_too_large() -> Status {
    etcd(Code::InvalidArgument, "etcdserver: request is too large")
}

/// `etcdserver: mvcc: required revision has been compacted`.
pub(crate) fn compacted() -> Status {
    etcd(
        Code::OutOfRange,
        "etcdserver: mvcc: required revision has been compacted",
    )
}

/// `etcdserver: mvcc: required revision is a future revision`.
pub(crate) fn future_revision() -> Status {
    etcd(
        Code::OutOfRange,
        "etcdserver: mvcc: required revision is a future revision",
    )
}

/// `etcdserver: requested lease not found`.
pub(crate) fn lease_not_found() -> Status {
    etcd(Code::NotFound, "etcdserver: requested lease not found")
}

/// `etcdserver: lease already exists`.
pub(crate) fn lease_exists() -> Status {
    etcd(Code::FailedPrecondition, "etcdserver: lease already exists")
}

/// `etcdserver: too large lease TTL`.
pub(crate) fn lease_ttl_too_large() -> Status {
    etcd(Code::OutOfRange, "etcdserver: too large lease TTL")
}

/// `etcdserver: member not found`.
pub(crate) fn member_not_found() -> Status {
    etcd(Code::NotFound, "etcdserver: member not found")
}

/// `etcdserver: member ID already exist`.
pub(crate) fn member_exists() -> Status {
    etcd(
        Code::FailedPrecondition,
        "etcdserver: member ID already exist",
    )
}

/// `etcdserver: given member URLs are invalid`.
pub(crate) fn member_bad_urls() -> Status {
    etcd(
        Code::InvalidArgument,
        "etcdserver: given member URLs are invalid",
    )
}

/// `etcdserver: can only promote a learner member`.
pub(crate) fn member_not_learner() -> Status {
    etcd(
        Code::FailedPrecondition,
        "etcdserver: can only promote a learner member",
    )
}

/// `etcdserver: no leader`.
pub(crate) fn no_leader() -> Status {
    etcd(Code::Unavailable, "etcdserver: no leader")
}

/// `etcdserver: leader changed`.
pub(crate) fn leader_changed() -> Status {
    etcd(Code::Unavailable, "etcdserver: leader changed")
}

/// `etcdserver: server stopped`: ends long-lived streams when the server shuts down.
pub(crate) fn stopped() -> Status {
    etcd(Code::Unavailable, "etcdserver: server stopped")
}

/// `etcdserver: request timed out`.
pub(crate) fn timed_out() -> Status {
    etcd(Code::Unavailable, "etcdserver: request timed out")
}

/// `election: no leader`: etcd's election service returns this plain (code `Unknown`) error
/// when nobody leads.
pub(crate) fn election_no_leader() -> Status {
    Status::unknown("election: no leader")
}

/// `election: not leader`: proclaiming with a leader key that no longer leads.
pub(crate) fn election_not_leader() -> Status {
    Status::unknown("election: not leader")
}

/// An RPC Strata does not serve, with what to use instead.
pub(crate) fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("etcdserver: {what} is not supported by strata"))
}

/// Returns gRPC-go's status for tonic's "decoded message length too large" (which tonic
/// reports as `out_of_range`, gRPC-go and so etcd as `resource_exhausted`), or `None` for
/// any other status.
pub(crate) fn oversized_message(status: &Status) -> Option<Status> {
    const PREFIX: &str = "Error, decoded message length too large: found ";
    if status.code() != Code::OutOfRange {
        return None;
    }
    let rest = status.message().strip_prefix(PREFIX)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes").unwrap_or(rest);
    Some(Status::resource_exhausted(format!(
        "grpc: received message larger than max ({found} vs. {limit})"
    )))
}

/// Keeps Strata's own message for an error etcd has no fixed text for.
fn passthrough(code: Code, error: &ApiError) -> Status {
    Status::new(code, format!("etcdserver: {}", error.message))
}

/// Maps a backend error to the status an etcd server would send.
///
/// `leader_known` is asked only for `unavailable` errors, to choose between etcd's
/// "no leader" (clients wait for an election) and "leader changed" (clients retry at once).
pub(crate) fn to_status(
    error: &ApiError,
    subject: Subject,
    leader_known: impl FnOnce() -> bool,
) -> Status {
    if let Some(status) = auth_status(&error.message) {
        return status;
    }
    match error.code {
        ErrorCode::BadRequest => bad_request(error),
        ErrorCode::PayloadTooLarge => request_too_large(),
        ErrorCode::MethodNotAllowed => passthrough(Code::Unimplemented, error),
        ErrorCode::NotFound => match subject {
            Subject::Lease | Subject::Lock => lease_not_found(),
            Subject::Member => member_not_found(),
            Subject::Election => election_not_leader(),
            // Keys are never "not found" in etcd (a missing key is an empty result); what a
            // KV request can fail to find is the lease a put names.
            Subject::Key => lease_not_found(),
        },
        ErrorCode::AlreadyExists => match subject {
            Subject::Lease | Subject::Lock => lease_exists(),
            Subject::Member => member_exists(),
            Subject::Key | Subject::Election => passthrough(Code::AlreadyExists, error),
        },
        ErrorCode::Compacted => compacted(),
        ErrorCode::FutureRevision => future_revision(),
        ErrorCode::FailedPrecondition => match subject {
            Subject::Election => election_not_leader(),
            _ => passthrough(Code::FailedPrecondition, error),
        },
        ErrorCode::Unavailable => {
            if leader_known() {
                leader_changed()
            } else {
                no_leader()
            }
        }
        ErrorCode::Timeout => timed_out(),
        // etcd's NOSPACE alarm: clients know this text and do not retry it.
        ErrorCode::NoSpace => Status::new(
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded",
        ),
        ErrorCode::Internal => passthrough(Code::Internal, error),
        ErrorCode::Unauthenticated => {
            Status::new(Code::Unauthenticated, "etcdserver: invalid auth token")
        }
        ErrorCode::PermissionDenied => permission_denied(),
    }
}

/// `bad_request` covers several etcd errors. The gRPC services check empty keys themselves;
/// the txn limits and the put options are enforced by the node and its store, whose messages
/// start with etcd's wording, which is what is recognised here.
fn bad_request(error: &ApiError) -> Status {
    let message = error.message.as_str();
    if message.starts_with("too many operations in txn request") {
        return too_many_ops();
    }
    if message.starts_with("duplicate key given in txn request") {
        return duplicate_key();
    }
    if message.starts_with("key not found") {
        return key_not_found();
    }
    if message.starts_with("value is provided") {
        return value_provided();
    }
    if message.starts_with("lease is provided") {
        return lease_provided();
    }
    passthrough(Code::InvalidArgument, error)
}

/// etcd's answer to a request the caller's roles do not allow.
pub(crate) fn permission_denied() -> Status {
    Status::new(Code::PermissionDenied, "etcdserver: permission denied")
}

/// etcd's auth errors, by the message the auth records' API starts them with. etcd clients
/// recognise these by their exact text (clientv3 turns an unknown failed-precondition message
/// into "the client connection is closing"), so the status carries etcd's words alone.
const AUTH_ERRORS: &[(&str, Code)] = &[
    (
        "etcdserver: root user does not exist",
        Code::FailedPrecondition,
    ),
    (
        "etcdserver: root user does not have root role",
        Code::FailedPrecondition,
    ),
    (
        "etcdserver: user name already exists",
        Code::FailedPrecondition,
    ),
    ("etcdserver: user name not found", Code::FailedPrecondition),
    (
        "etcdserver: role name already exists",
        Code::FailedPrecondition,
    ),
    ("etcdserver: role name not found", Code::FailedPrecondition),
    (
        "etcdserver: role is not granted to the user",
        Code::FailedPrecondition,
    ),
    (
        "etcdserver: permission is not granted to the role",
        Code::FailedPrecondition,
    ),
    (
        "etcdserver: authentication is not enabled",
        Code::FailedPrecondition,
    ),
    ("etcdserver: invalid auth management", Code::InvalidArgument),
    ("etcdserver: user name is empty", Code::InvalidArgument),
    ("etcdserver: role name is empty", Code::InvalidArgument),
];

fn auth_status(message: &str) -> Option<Status> {
    AUTH_ERRORS
        .iter()
        .find(|(text, _)| message.starts_with(text))
        .map(|(text, code)| Status::new(*code, *text))
}

/// etcd's answer to a request without a token while access control is on.
pub(crate) fn user_empty() -> Status {
    Status::new(Code::InvalidArgument, "etcdserver: user name is empty")
}

/// etcd's answer to an unknown or expired token.
pub(crate) fn invalid_auth_token() -> Status {
    Status::new(Code::Unauthenticated, "etcdserver: invalid auth token")
}

/// etcd's answer to a wrong user name or password.
pub(crate) fn auth_failed() -> Status {
    Status::new(
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    )
}

/// etcd's answer to a login while access control is off (etcdctl then goes on without one).
pub(crate) fn auth_not_enabled() -> Status {
    Status::new(
        Code::FailedPrecondition,
        "etcdserver: authentication is not enabled",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(code: ErrorCode, message: &str, subject: Subject) -> Status {
        to_status(&ApiError::new(code, message), subject, || true)
    }

    #[test]
    fn codes_and_messages_match_etcd() {
        let compacted = map(ErrorCode::Compacted, "x", Subject::Key);
        assert_eq!(compacted.code(), Code::OutOfRange);
        assert_eq!(
            compacted.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let lease = map(ErrorCode::NotFound, "lease 7 not found", Subject::Lease);
        assert_eq!(lease.code(), Code::NotFound);
        assert_eq!(lease.message(), "etcdserver: requested lease not found");
        let member = map(ErrorCode::NotFound, "no such member", Subject::Member);
        assert_eq!(member.message(), "etcdserver: member not found");
        let large = map(ErrorCode::PayloadTooLarge, "too big", Subject::Key);
        assert_eq!(large.code(), Code::InvalidArgument);
        assert_eq!(large.message(), "etcdserver: request is too large");
        let timeout = map(ErrorCode::Timeout, "slow", Subject::Key);
        assert_eq!(timeout.code(), Code::Unavailable);
        assert_eq!(timeout.message(), "etcdserver: request timed out");
    }

    #[test]
    fn txn_limits_keep_etcd_wording() {
        let ops = map(
            ErrorCode::BadRequest,
            "too many operations in txn request (limit 128, kv.max_txn_ops)",
            Subject::Key,
        );
        assert_eq!(
            ops.message(),
            "etcdserver: too many operations in txn request"
        );
        let dup = map(
            ErrorCode::BadRequest,
            "duplicate key given in txn request",
            Subject::Key,
        );
        assert_eq!(
            dup.message(),
            "etcdserver: duplicate key given in txn request"
        );
        let other = map(
            ErrorCode::BadRequest,
            "limit must not be negative",
            Subject::Key,
        );
        assert_eq!(other.code(), Code::InvalidArgument);
        assert_eq!(other.message(), "etcdserver: limit must not be negative");
    }

    #[test]
    fn unavailable_depends_on_a_known_leader() {
        let error = ApiError::unavailable("this node is not the leader");
        let changed = to_status(&error, Subject::Key, || true);
        assert_eq!(changed.message(), "etcdserver: leader changed");
        let none = to_status(&error, Subject::Key, || false);
        assert_eq!(none.code(), Code::Unavailable);
        assert_eq!(none.message(), "etcdserver: no leader");
    }
}
