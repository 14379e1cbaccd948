"""Exports a counter, a histogram and a trace of two spans with the OpenTelemetry Python SDK
over OTLP/HTTP (protobuf), unchanged, to the endpoint given; prints the trace id. The spans
go gzip-compressed, as the OpenTelemetry Collector sends them by default.

usage: otel_export.py ENDPOINT   (e.g. http://127.0.0.1:7700)
"""
import sys

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

endpoint = sys.argv[1].rstrip("/")
resource = Resource.create({"service.name": "otel-demo", "service.instance.id": "demo-1"})

reader = PeriodicExportingMetricReader(
    OTLPMetricExporter(endpoint=endpoint + "/v1/metrics"), export_interval_millis=60_000
)
meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
meter = meter_provider.get_meter("demo")
orders = meter.create_counter("orders_placed", description="Orders placed.")
latency = meter.create_histogram("checkout_latency", unit="s", description="Checkout latency.")
for i in range(5):
    orders.add(2, {"region": "eu"})
    latency.record(0.05 * (i + 1), {"region": "eu"})
meter_provider.force_flush()
meter_provider.shutdown()

tracer_provider = TracerProvider(resource=resource)
spans = OTLPSpanExporter(endpoint=endpoint + "/v1/traces", compression=Compression.Gzip)
tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
tracer = tracer_provider.get_tracer("demo")
with tracer.start_as_current_span("checkout") as root:
    with tracer.start_as_current_span("charge-card") as child:
        child.set_attribute("amount", 42)
    trace_id = format(root.get_span_context().trace_id, "032x")
tracer_provider.shutdown()
print(trace_id, flush=True)
