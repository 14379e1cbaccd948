//! Request tracing shared by the RPC library (`strata-rpc`) and the gateway: the W3C trace
//! context and spans exported over OTLP/HTTP in its JSON encoding.
//!
//! - [`TraceParent`]: a request's trace and span ids and its sampling decision, read from
//!   and written to the `traceparent` header. A hop continues the caller's trace as a
//!   [`TraceParent::child`], or starts one with [`TraceParent::root`].
//! - [`Span`]: a finished span with OpenTelemetry's attribute names; [`export_body`] is the
//!   OTLP `ExportTraceServiceRequest` of some.
//! - [`Exporter`]: a handle that queues spans, and the task that posts them in batches to a
//!   [`Collector`] (any OTLP/HTTP receiver: a Strata node's monitor, an OpenTelemetry
//!   Collector, Jaeger), or hands them to a [`LocalSink`] in the same process (the gateway to
//!   its node's monitor). The caller runs the task where it tracks its tasks.
//!
//! Recording never waits: a span is dropped (and counted) when the queue is full or the
//! collector fails. Nothing here reads the environment or keeps global state; the RPC library
//! decides its process-wide exporter from the OpenTelemetry variables, and the gateway has one
//! per node.

mod exporter;
mod span;
mod traceparent;

pub use exporter::{Collector, Counters, Exporter, LocalSink};
pub use span::{export_body, AttributeValue, Span, SpanKind};
pub use traceparent::{header, TraceParent, TRACEPARENT, TRACESTATE};
