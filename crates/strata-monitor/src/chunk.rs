//! Chunks: a run of one series' samples (millisecond timestamps, strictly increasing, and
//! `f64` values), compressed as in Facebook's Gorilla paper.
//!
//! Layout: the sample count (2 bytes, big endian), then a bit stream, most significant bit
//! first:
//! - the first sample: its timestamp (64 bits, two's complement) and value (64 bits, IEEE 754);
//! - every later timestamp as the delta of deltas from the one before (the second sample's
//!   from a delta of 0): `0` for none, else `10`, `110` or `1110` and a 14-, 17- or 20-bit
//!   signed value, or `1111` and 64 bits;
//! - every later value XORed with the one before: `0` when equal; else `1`, then `0` and the
//!   meaningful bits when they fit the previous window of leading and trailing zeros, or `1`,
//!   5 bits of leading zeros, 6 bits of meaningful length (0 meaning 64) and the bits.
//!
//! Values are kept bit for bit (NaN payloads, negative zero). Decoding checks every length
//! against the input and fails with an error, never a panic, on bytes that are not a chunk.

/// Why a sample could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// Timestamps must strictly increase within a chunk.
    #[error("sample at {timestamp} ms is not after the chunk's last, at {last} ms")]
    OutOfOrder {
        /// The refused timestamp.
        timestamp: i64,
        /// The chunk's last.
        last: i64,
    },
    /// A chunk holds at most `u16::MAX` samples.
    #[error("the chunk is full")]
    Full,
}

/// Why bytes did not decode as a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes end before the samples they announce.
    #[error("chunk truncated at sample {0}")]
    Truncated(usize),
    /// A value's window does not fit 64 bits.
    #[error("chunk corrupt at sample {0}")]
    Corrupt(usize),
    /// Timestamps that do not increase, or overflow.
    #[error("chunk timestamps out of order at sample {0}")]
    OutOfOrder(usize),
}

/// Bits written most significant first.
#[derive(Default)]
pub(crate) struct BitWriter {
    pub(crate) bytes: Vec<u8>,
    /// Bits used in the last byte (0 to 8; 8 or empty means a new byte is next).
    used: u8,
}

impl BitWriter {
    pub(crate) fn bit(&mut self, bit: bool) {
        self.bits(u64::from(bit), 1);
    }

    /// The low `n` bits of `value` (`n` at most 64), most significant first.
    pub(crate) fn bits(&mut self, value: u64, n: u32) {
        let mut left = n;
        while left > 0 {
            if self.used == 0 || self.used == 8 {
                self.bytes.push(0);
                self.used = 0;
            }
            let room = u32::from(8 - self.used);
            let take = room.min(left);
            let piece = ((value >> (left - take)) & ((1u64 << take) - 1)) as u8;
            if let Some(last) = self.bytes.last_mut() {
                *last |= piece << (room - take);
            }
            self.used += take as u8;
            left -= take;
        }
    }
}

/// Reads what a [`BitWriter`] wrote; `None` past the end.
pub(crate) struct BitReader<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) position: usize,
}

impl BitReader<'_> {
    pub(crate) fn bit(&mut self) -> Option<bool> {
        let byte = self.bytes.get(self.position / 8)?;
        let bit = byte & (0x80 >> (self.position % 8)) != 0;
        self.position += 1;
        Some(bit)
    }

    /// `n` bits (at most 64).
    pub(crate) fn bits(&mut self, n: u32) -> Option<u64> {
        if n > 64 || self.position + n as usize > self.bytes.len() * 8 {
            return None;
        }
        let mut value = 0u64;
        let mut left = n;
        while left > 0 {
            let byte = u64::from(*self.bytes.get(self.position / 8)?);
            let room = 8 - (self.position % 8) as u32;
            let take = room.min(left);
            let piece = (byte >> (room - take)) & ((1u64 << take) - 1);
            value = if take == 64 {
                piece
            } else {
                (value << take) | piece
            };
            self.position += take as usize;
            left -= take;
        }
        Some(value)
    }
}

/// The delta-of-delta buckets: prefix, its length, and the value's bits.
const BUCKETS: [(u64, u32, u32); 3] = [(0b10, 2, 14), (0b110, 3, 17), (0b1110, 4, 20)];

/// True when `x` is within an `n`-bit bucket (Prometheus's bounds: one more positive).
fn fits(x: i64, n: u32) -> bool {
    -((1i64 << (n - 1)) - 1) <= x && x <= 1i64 << (n - 1)
}

/// A chunk being written.
#[derive(Default)]
pub struct ChunkWriter {
    out: BitWriter,
    count: u16,
    last_t: i64,
    last_delta: i64,
    values: XorValues,
}

/// Gorilla's value coding: each value XORed with the one before.
#[derive(Default)]
pub(crate) struct XorValues {
    last: u64,
    /// The previous value window: leading zeros and meaningful bits.
    window: Option<(u32, u32)>,
}

impl XorValues {
    /// The state after a first value, which the caller writes in full.
    pub(crate) fn first(bits: u64) -> XorValues {
        XorValues {
            last: bits,
            window: None,
        }
    }

    /// Writes `bits` (a value's IEEE 754 bits) after the value before.
    pub(crate) fn put(&mut self, out: &mut BitWriter, bits: u64) {
        let xor = bits ^ self.last;
        self.last = bits;
        if xor == 0 {
            out.bit(false);
            return;
        }
        out.bit(true);
        let leading = xor.leading_zeros().min(31);
        let trailing = xor.trailing_zeros();
        if let Some((prev_leading, prev_meaningful)) = self.window {
            let prev_trailing = 64 - prev_leading - prev_meaningful;
            if leading >= prev_leading && trailing >= prev_trailing {
                out.bit(false);
                out.bits(xor >> prev_trailing, prev_meaningful);
                return;
            }
        }
        let meaningful = 64 - leading - trailing;
        out.bit(true);
        out.bits(u64::from(leading), 5);
        // 64 meaningful bits are written as 0 (6 bits hold 0 to 63).
        out.bits(u64::from(meaningful & 63), 6);
        out.bits(xor >> trailing, meaningful);
        self.window = Some((leading, meaningful));
    }

    /// Reads the value after the last one read.
    pub(crate) fn read(
        &mut self,
        reader: &mut BitReader<'_>,
        i: usize,
    ) -> Result<u64, DecodeError> {
        self.last ^= read_xor(reader, &mut self.window, i)?;
        Ok(self.last)
    }
}

impl ChunkWriter {
    /// An empty chunk.
    pub fn new() -> ChunkWriter {
        ChunkWriter::default()
    }

    /// Samples so far.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// True before the first sample.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a sample.
    pub fn append(&mut self, timestamp: i64, value: f64) -> Result<(), AppendError> {
        if self.count == u16::MAX {
            return Err(AppendError::Full);
        }
        let bits = value.to_bits();
        if self.count == 0 {
            self.out.bits(timestamp as u64, 64);
            self.out.bits(bits, 64);
            self.values = XorValues::first(bits);
        } else {
            if timestamp <= self.last_t {
                return Err(AppendError::OutOfOrder {
                    timestamp,
                    last: self.last_t,
                });
            }
            // Wrapping: the decoder undoes it the same way, so any i64 pair round-trips.
            let delta = timestamp.wrapping_sub(self.last_t);
            let dod = delta.wrapping_sub(self.last_delta);
            self.put_dod(dod);
            self.values.put(&mut self.out, bits);
            self.last_delta = delta;
        }
        self.last_t = timestamp;
        self.count += 1;
        Ok(())
    }

    fn put_dod(&mut self, dod: i64) {
        if dod == 0 {
            self.out.bit(false);
            return;
        }
        for (prefix, prefix_len, n) in BUCKETS {
            if fits(dod, n) {
                self.out.bits(prefix, prefix_len);
                self.out.bits(dod as u64 & ((1u64 << n) - 1), n);
                return;
            }
        }
        self.out.bits(0b1111, 4);
        self.out.bits(dod as u64, 64);
    }

    /// The chunk's bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.out.bytes.len());
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&self.out.bytes);
        out
    }
}

/// Decodes a chunk into its samples.
pub fn decode(bytes: &[u8]) -> Result<Vec<(i64, f64)>, DecodeError> {
    let (Some(&[hi, lo]), rest) = (bytes.first_chunk::<2>(), bytes.get(2..).unwrap_or(&[])) else {
        return Err(DecodeError::Truncated(0));
    };
    let count = usize::from(u16::from_be_bytes([hi, lo]));
    let mut reader = BitReader {
        bytes: rest,
        position: 0,
    };
    let mut samples = Vec::with_capacity(count.min(rest.len() * 8 + 1));
    let (mut t, mut delta, mut v) = (0i64, 0i64, 0u64);
    let mut window: Option<(u32, u32)> = None;
    for i in 0..count {
        if i == 0 {
            t = reader.bits(64).ok_or(DecodeError::Truncated(i))? as i64;
            v = reader.bits(64).ok_or(DecodeError::Truncated(i))?;
        } else {
            let dod = read_dod(&mut reader).ok_or(DecodeError::Truncated(i))?;
            delta = delta.wrapping_add(dod);
            let next = t.wrapping_add(delta);
            if next <= t {
                return Err(DecodeError::OutOfOrder(i));
            }
            t = next;
            v ^= read_xor(&mut reader, &mut window, i)?;
        }
        samples.push((t, f64::from_bits(v)));
    }
    Ok(samples)
}

fn read_dod(reader: &mut BitReader<'_>) -> Option<i64> {
    if !reader.bit()? {
        return Some(0);
    }
    for (_, _, n) in BUCKETS {
        // After the 1s read so far, a 0 closes this bucket's prefix.
        if !reader.bit()? {
            let raw = reader.bits(n)?;
            let value = if raw > 1u64 << (n - 1) {
                raw as i64 - (1i64 << n)
            } else {
                raw as i64
            };
            return Some(value);
        }
    }
    Some(reader.bits(64)? as i64)
}

fn read_xor(
    reader: &mut BitReader<'_>,
    window: &mut Option<(u32, u32)>,
    i: usize,
) -> Result<u64, DecodeError> {
    let truncated = DecodeError::Truncated(i);
    if !reader.bit().ok_or(truncated)? {
        return Ok(0);
    }
    let (leading, meaningful) = if !reader.bit().ok_or(truncated)? {
        window.ok_or(DecodeError::Corrupt(i))?
    } else {
        let leading = reader.bits(5).ok_or(truncated)? as u32;
        let meaningful = match reader.bits(6).ok_or(truncated)? as u32 {
            0 => 64,
            n => n,
        };
        if leading + meaningful > 64 {
            return Err(DecodeError::Corrupt(i));
        }
        *window = Some((leading, meaningful));
        (leading, meaningful)
    };
    let bits = reader.bits(meaningful).ok_or(truncated)?;
    Ok(bits << (64 - leading - meaningful))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(samples: &[(i64, f64)]) -> Vec<u8> {
        let mut chunk = ChunkWriter::new();
        for (t, v) in samples {
            chunk.append(*t, *v).unwrap();
        }
        chunk.bytes()
    }

    /// Samples equal bit for bit.
    pub(crate) fn same(a: &[(i64, f64)], b: &[(i64, f64)]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.0 == y.0 && x.1.to_bits() == y.1.to_bits())
    }

    #[test]
    fn regular_scrapes_compress_to_a_few_bits_a_sample() {
        // A counter that grows at every 15 s scrape, 120 samples (Prometheus's chunk size):
        // the timestamps cost a bit each, the values about two bytes (1.875 when written).
        let samples: Vec<(i64, f64)> = (0..120)
            .map(|i| (1_700_000_000_000 + i * 15_000, (i * 7 + (i % 3)) as f64))
            .collect();
        let bytes = encode(&samples);
        assert!(same(&decode(&bytes).unwrap(), &samples));
        let per_sample = bytes.len() as f64 / samples.len() as f64;
        assert!(per_sample < 2.0, "{per_sample} bytes per sample");
        // A constant gauge: two bits a sample after the first.
        let flat: Vec<(i64, f64)> = (0..120).map(|i| (i * 15_000, 42.5)).collect();
        // Header 2 bytes, first sample 16, the second 21 bits (its delta in the 17-bit
        // bucket, an unchanged value), then 118 x 2 bits: 257 bits, 33 bytes.
        assert_eq!(encode(&flat).len(), 2 + 16 + 33);
    }

    /// Timestamps far apart and values no coding may lose: NaN payloads, negative zero.
    pub(crate) const SPECIAL_VALUES: [(i64, f64); 9] = [
        (i64::MIN + 1, f64::NAN),
        (i64::MIN + 2, -0.0),
        (0, f64::INFINITY),
        (1, f64::NEG_INFINITY),
        (8_194, 1e-300),
        (80_000, f64::from_bits(0x7ff8_dead_beef_0001)),
        (700_000, 1.0),
        (i64::MAX - 5, 1.0),
        (i64::MAX, f64::MIN_POSITIVE),
    ];

    #[test]
    fn every_bucket_and_special_value_round_trips() {
        assert!(same(
            &decode(&encode(&SPECIAL_VALUES)).unwrap(),
            &SPECIAL_VALUES
        ));
    }

    #[test]
    fn appends_out_of_order_are_refused_and_change_nothing() {
        let mut chunk = ChunkWriter::new();
        chunk.append(10, 1.0).unwrap();
        assert_eq!(
            chunk.append(10, 2.0),
            Err(AppendError::OutOfOrder {
                timestamp: 10,
                last: 10
            })
        );
        chunk.append(11, 2.0).unwrap();
        assert_eq!(decode(&chunk.bytes()).unwrap(), [(10, 1.0), (11, 2.0)]);
    }

    #[test]
    fn truncated_and_empty_chunks_are_errors() {
        assert_eq!(decode(&[]), Err(DecodeError::Truncated(0)));
        assert_eq!(decode(&[0, 0]), Ok(vec![]));
        let bytes = encode(&[(1, 1.0), (2, 2.0), (3, 3.0)]);
        for cut in 2..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn any_increasing_series_round_trips_bit_for_bit(
            start in any::<i64>(),
            steps in proptest::collection::vec((1i64..1i64 << 40, any::<u64>()), 0..300),
            first in any::<u64>(),
        ) {
            let mut samples = vec![(start, f64::from_bits(first))];
            let mut t = start;
            for (step, bits) in steps {
                let Some(next) = t.checked_add(step) else { break };
                t = next;
                samples.push((t, f64::from_bits(bits)));
            }
            let decoded = decode(&encode(&samples)).unwrap();
            prop_assert!(same(&decoded, &samples));
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(samples) = decode(&bytes) {
                prop_assert!(samples.windows(2).all(|w| w[0].0 < w[1].0));
            }
        }
    }
}
