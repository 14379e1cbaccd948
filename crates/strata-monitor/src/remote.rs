//! Prometheus remote write 1.0: a snappy-compressed (block format) protobuf `WriteRequest`.
//! The monitor takes it at `/api/v1/write` from any Prometheus or agent, and uses the same
//! form to replicate what it ingests to the other monitor nodes.

use crate::model::Labels;
use prost::Message;

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    /// The series.
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    /// Metadata (type, help) of metric families.
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries` (exemplars and native histograms are not kept).
#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    /// Its labels, `__name__` among them.
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    /// Its samples.
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, Message)]
pub struct Label {
    /// Name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    /// The value.
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata`.
#[derive(Clone, PartialEq, Message)]
pub struct MetricMetadata {
    /// 0 unknown, 1 counter, 2 gauge, 3 histogram, 4 gaugehistogram, 5 summary, 6 info,
    /// 7 stateset.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    /// The family name.
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    /// Help text.
    #[prost(string, tag = "4")]
    pub help: String,
    /// Unit.
    #[prost(string, tag = "5")]
    pub unit: String,
}

/// The type name of a metadata kind.
pub fn kind_name(kind: i32) -> &'static str {
    match kind {
        1 => "counter",
        2 => "gauge",
        3 => "histogram",
        4 => "gaugehistogram",
        5 => "summary",
        6 => "info",
        7 => "stateset",
        _ => "unknown",
    }
}

/// A batch of samples as the store takes them.
pub type Batch = Vec<(Labels, i64, f64)>;

/// Decodes a remote-write body (snappy, then protobuf) into a batch, refusing bodies that
/// would expand past `max_bytes`.
pub fn decode(body: &[u8], max_bytes: usize) -> Result<(Batch, Vec<MetricMetadata>), String> {
    let len = snap::raw::decompress_len(body).map_err(|e| format!("snappy: {e}"))?;
    if len > max_bytes {
        return Err(format!(
            "the request expands to {len} bytes, over the limit of {max_bytes}"
        ));
    }
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("snappy: {e}"))?;
    let request = WriteRequest::decode(raw.as_slice()).map_err(|e| format!("protobuf: {e}"))?;
    let mut batch = Vec::new();
    for series in request.timeseries {
        let labels = Labels::new(
            series
                .labels
                .into_iter()
                .map(|l| (l.name, l.value))
                .collect(),
        );
        if labels.name().is_none() {
            return Err("a series has no __name__ label".into());
        }
        for s in series.samples {
            batch.push((labels.clone(), s.timestamp, s.value));
        }
    }
    Ok((batch, request.metadata))
}

/// Encodes a batch as a remote-write body (samples of one series grouped together).
pub fn encode(batch: &[(Labels, i64, f64)]) -> Vec<u8> {
    let mut series: Vec<TimeSeries> = Vec::new();
    let mut index: std::collections::HashMap<&Labels, usize> = std::collections::HashMap::new();
    for (labels, t, v) in batch {
        let i = *index.entry(labels).or_insert_with(|| {
            series.push(TimeSeries {
                labels: labels
                    .iter()
                    .map(|(k, v)| Label {
                        name: k.to_string(),
                        value: v.to_string(),
                    })
                    .collect(),
                samples: Vec::new(),
            });
            series.len() - 1
        });
        series[i].samples.push(Sample {
            value: *v,
            timestamp: *t,
        });
    }
    let raw = WriteRequest {
        timeseries: series,
        metadata: Vec::new(),
    }
    .encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_round_trips_and_garbage_is_refused() {
        let a = Labels::from_pairs(&[("__name__", "x"), ("a", "1")]);
        let b = Labels::from_pairs(&[("__name__", "y")]);
        let batch = vec![
            (a.clone(), 1, 1.5),
            (b.clone(), 2, 2.5),
            (a.clone(), 3, f64::INFINITY),
        ];
        let (back, _) = decode(&encode(&batch), 1 << 20).unwrap();
        assert_eq!(
            back,
            vec![(a.clone(), 1, 1.5), (a, 3, f64::INFINITY), (b, 2, 2.5)]
        );
        assert!(decode(b"not snappy at all", 1 << 20).is_err());
        assert!(decode(&encode(&batch), 4)
            .unwrap_err()
            .contains("over the limit"));
    }
}
