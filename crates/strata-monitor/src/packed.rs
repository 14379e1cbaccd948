//! Block chunks: all of one series' samples in one block, packed tighter than the head's
//! Gorilla chunks ([`crate::chunk`]) because the whole run is known before it is written.
//!
//! The idea (VictoriaMetrics stores numbers much the same way): most values in monitoring are
//! decimals in disguise (counters of bytes or packets, seconds with two decimals, gauges that
//! change now and then by a multiple of a page size). Such values are written as integers,
//! `v × 10^k`, and the integers as deltas packed to the bits they need, which Gorilla's XOR
//! coding of the floats' bits cannot see. Values that are no such decimal keep the XOR coding.
//!
//! Layout (varints are LEB128, signed ones zigzagged first):
//! - the sample count (varint, at least 1);
//! - the timestamps as an integer run (below);
//! - the values: a byte `0` and the XOR coding (the first value's 64 bits, then each value
//!   XORed with the one before, as in a chunk), padded to a byte; or a byte `1`, a byte `k` and
//!   the integers `v × 10^k` as an integer run. The second is used when every value is such an
//!   integer divided by `10^k` bit for bit and it comes out shorter.
//!
//! An integer run: the first integer (signed varint), then the deltas between neighbours in
//! one of two forms, whichever is shorter:
//! - frame of reference: a byte `0`, the smallest delta (signed varint), the greatest common
//!   divisor `g` of the deltas' distances from it (varint) and a bit width `w` (byte); then
//!   each delta as `(delta - smallest) / g` in `w` bits. Steady counters and regular
//!   timestamps (`w = 0`) cost a few bits or none per sample.
//! - sparse: a byte `1`, `g` (of the non-zero deltas) and `w`; then each delta as a bit `0`
//!   when it is zero, else `1` and `zigzag(delta / g)` in `w` bits. Gauges that seldom change
//!   cost about a bit per sample.
//!
//! Deltas wrap as two's complement, so every run of `i64`s round-trips. Decoding checks
//! every length against the input and fails with an error, never a panic.

use crate::chunk::{BitReader, BitWriter, DecodeError, XorValues};

/// Samples per packed chunk at most (a day of one-second samples fits four times over).
pub const MAX_SAMPLES: usize = 1 << 19;
/// Powers of ten exactly representable as `f64`, and the largest decimal exponent tried.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];
/// Integers below this magnitude are exact in an `f64`.
const EXACT: f64 = 9_007_199_254_740_992.0;

pub(crate) fn put_varint(out: &mut Vec<u8>, mut x: u64) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

fn zigzag(x: i64) -> u64 {
    ((x << 1) ^ (x >> 63)) as u64
}

fn unzigzag(x: u64) -> i64 {
    ((x >> 1) as i64) ^ -((x & 1) as i64)
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn width(x: u64) -> u32 {
    64 - x.leading_zeros()
}

/// Appends a run of integers.
fn put_run(out: &mut Vec<u8>, xs: &[i64]) {
    let Some((&first, _)) = xs.split_first() else {
        return;
    };
    put_varint(out, zigzag(first));
    if xs.len() == 1 {
        return;
    }
    let deltas: Vec<i64> = xs.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    let smallest = deltas.iter().copied().min().unwrap_or(0);
    let offsets = deltas.iter().map(|d| d.wrapping_sub(smallest) as u64);
    let for_g = offsets.clone().fold(0, gcd).max(1);
    let for_w = width(offsets.clone().max().unwrap_or(0) / for_g);
    let nonzero = deltas.iter().filter(|d| **d != 0);
    let sparse_g = nonzero
        .clone()
        .map(|d| d.unsigned_abs())
        .fold(0, gcd)
        .max(1);
    let sparse_w = nonzero
        .clone()
        .map(|d| width(zigzag(d / sparse_g as i64)))
        .max()
        .unwrap_or(0);
    let n = deltas.len() as u64;
    let for_bits = n * u64::from(for_w);
    let sparse_bits = n + nonzero.count() as u64 * u64::from(sparse_w);
    let mut bits = BitWriter::default();
    if for_bits <= sparse_bits {
        out.push(0);
        put_varint(out, zigzag(smallest));
        put_varint(out, for_g);
        out.push(for_w as u8);
        for offset in offsets {
            bits.bits(offset / for_g, for_w);
        }
    } else {
        out.push(1);
        put_varint(out, sparse_g);
        out.push(sparse_w as u8);
        for &d in &deltas {
            bits.bit(d != 0);
            if d != 0 {
                bits.bits(zigzag(d / sparse_g as i64), sparse_w);
            }
        }
    }
    out.extend_from_slice(&bits.bytes);
}

/// The decimal exponent that turns every value into an integer bit for bit, if any.
fn decimal_exponent(values: &[f64]) -> Option<usize> {
    let exponent_of = |v: f64| {
        (0..POW10.len()).find(|&k| {
            let m = (v * POW10[k]).round();
            m.abs() < EXACT && ((m as i64) as f64 / POW10[k]).to_bits() == v.to_bits()
        })
    };
    let mut k = 0;
    for &v in values {
        if !v.is_finite() {
            return None;
        }
        k = k.max(exponent_of(v)?);
    }
    // A value exact at a smaller exponent is exact at a larger one as long as the integer
    // stays exact; check, since the scaled integers grow.
    values
        .iter()
        .all(|&v| {
            let m = (v * POW10[k]).round();
            m.abs() < EXACT && ((m as i64) as f64 / POW10[k]).to_bits() == v.to_bits()
        })
        .then_some(k)
}

/// Packs samples (timestamps strictly increasing; at most [`MAX_SAMPLES`]).
pub fn encode(samples: &[(i64, f64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + samples.len());
    put_varint(&mut out, samples.len() as u64);
    let times: Vec<i64> = samples.iter().map(|s| s.0).collect();
    put_run(&mut out, &times);
    let values: Vec<f64> = samples.iter().map(|s| s.1).collect();
    let mut xor = vec![0u8];
    if let Some((&first, rest)) = values.split_first() {
        let mut bits = BitWriter::default();
        bits.bits(first.to_bits(), 64);
        let mut state = XorValues::first(first.to_bits());
        for v in rest {
            state.put(&mut bits, v.to_bits());
        }
        xor.extend_from_slice(&bits.bytes);
    }
    if let Some(k) = decimal_exponent(&values) {
        let ints: Vec<i64> = values
            .iter()
            .map(|v| (v * POW10[k]).round() as i64)
            .collect();
        let mut decimal = vec![1u8, k as u8];
        put_run(&mut decimal, &ints);
        if decimal.len() < xor.len() {
            out.extend_from_slice(&decimal);
            return out;
        }
    }
    out.extend_from_slice(&xor);
    out
}

/// Reads bytes, varints and bit runs from a packed chunk.
struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut x = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            x |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(x);
            }
        }
        None
    }

    /// A bit reader over the rest; [`Input::skip_bits`] moves past what it read.
    fn bits(&self) -> BitReader<'a> {
        BitReader {
            bytes: self.bytes.get(self.at..).unwrap_or(&[]),
            position: 0,
        }
    }

    fn skip_bits(&mut self, reader: &BitReader<'_>) {
        self.at += reader.position.div_ceil(8);
    }
}

/// Reads a run of `n` integers.
fn read_run(input: &mut Input<'_>, n: usize) -> Result<Vec<i64>, DecodeError> {
    let truncated = |i| DecodeError::Truncated(i);
    let mut xs = Vec::with_capacity(n.min(input.bytes.len() * 8 + 1));
    if n == 0 {
        return Ok(xs);
    }
    let mut x = unzigzag(input.varint().ok_or(truncated(0))?);
    xs.push(x);
    if n == 1 {
        return Ok(xs);
    }
    let form = input.byte().ok_or(truncated(1))?;
    let smallest = match form {
        0 => unzigzag(input.varint().ok_or(truncated(1))?),
        1 => 0,
        _ => return Err(DecodeError::Corrupt(1)),
    };
    let g = input.varint().ok_or(truncated(1))?;
    let w = u32::from(input.byte().ok_or(truncated(1))?);
    if g == 0 || w > 64 {
        return Err(DecodeError::Corrupt(1));
    }
    let mut reader = input.bits();
    for i in 1..n {
        let delta = if form == 0 {
            let offset = reader.bits(w).ok_or(truncated(i))?;
            smallest.wrapping_add(offset.wrapping_mul(g) as i64)
        } else if reader.bit().ok_or(truncated(i))? {
            unzigzag(reader.bits(w).ok_or(truncated(i))?).wrapping_mul(g as i64)
        } else {
            0
        };
        x = x.wrapping_add(delta);
        xs.push(x);
    }
    input.skip_bits(&reader);
    Ok(xs)
}

/// The number of samples in a packed chunk, read from its header.
pub fn count(bytes: &[u8]) -> usize {
    Input { bytes, at: 0 }
        .varint()
        .map_or(0, |n| n.min(MAX_SAMPLES as u64) as usize)
}

/// Unpacks a chunk into its samples.
pub fn decode(bytes: &[u8]) -> Result<Vec<(i64, f64)>, DecodeError> {
    let mut input = Input { bytes, at: 0 };
    let n = input.varint().ok_or(DecodeError::Truncated(0))?;
    if n == 0 || n > MAX_SAMPLES as u64 {
        return Err(DecodeError::Corrupt(0));
    }
    let n = n as usize;
    let times = read_run(&mut input, n)?;
    if let Some(i) = times.windows(2).position(|w| w[1] <= w[0]) {
        return Err(DecodeError::OutOfOrder(i + 1));
    }
    let values: Vec<f64> = match input.byte().ok_or(DecodeError::Truncated(0))? {
        0 => {
            let mut reader = input.bits();
            let first = reader.bits(64).ok_or(DecodeError::Truncated(0))?;
            let mut state = XorValues::first(first);
            let mut values = Vec::with_capacity(n);
            values.push(f64::from_bits(first));
            for i in 1..n {
                values.push(f64::from_bits(state.read(&mut reader, i)?));
            }
            values
        }
        1 => {
            let k = usize::from(input.byte().ok_or(DecodeError::Truncated(0))?);
            let scale = *POW10.get(k).ok_or(DecodeError::Corrupt(0))?;
            read_run(&mut input, n)?
                .into_iter()
                .map(|m| m as f64 / scale)
                .collect()
        }
        _ => return Err(DecodeError::Corrupt(0)),
    };
    Ok(times.into_iter().zip(values).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests::{same, SPECIAL_VALUES};
    use proptest::prelude::*;

    fn round_trip(samples: &[(i64, f64)]) -> usize {
        let bytes = encode(samples);
        let decoded = decode(&bytes).unwrap();
        assert!(same(&decoded, samples), "{decoded:?} != {samples:?}");
        assert_eq!(count(&bytes), samples.len());
        bytes.len()
    }

    #[test]
    fn regular_counters_and_steady_gauges_take_a_few_bits_a_sample() {
        let t0 = 1_700_000_000_000;
        // A constant: the header and nothing per sample.
        let flat: Vec<(i64, f64)> = (0..480).map(|i| (t0 + i * 15_000, 42.5)).collect();
        assert!(round_trip(&flat) < 30, "{}", round_trip(&flat));
        // A CPU-seconds counter with two decimals growing 5 to 15 s a scrape: 10 bits each.
        let mut v = 1234.56;
        let cpu: Vec<(i64, f64)> = (0..480)
            .map(|i| {
                v = ((v + 5.0 + ((i * 37) % 1000) as f64 / 100.0) * 100.0f64).round() / 100.0;
                (t0 + i * 15_000, v)
            })
            .collect();
        let bytes = round_trip(&cpu);
        assert!(bytes < 480 * 10 / 8 + 30, "{bytes} bytes");
        // A page-size gauge that changes one scrape in five: a bit, and 16 more now and then.
        let mut m = 4096.0 * 1e6;
        let memory: Vec<(i64, f64)> = (0..480)
            .map(|i| {
                if i % 5 == 0 {
                    m += 4096.0 * ((i * 7919) % 20_000) as f64 - 4096.0 * 10_000.0;
                }
                (t0 + i * 15_000, m)
            })
            .collect();
        let bytes = round_trip(&memory);
        assert!(bytes < (480 + 96 * 16) / 8 + 30, "{bytes} bytes");
    }

    #[test]
    fn values_no_decimal_can_hold_keep_their_bits() {
        let samples = SPECIAL_VALUES.map(|(t, v)| (t, if v == 1.0 { 1.0 / 3.0 } else { v }));
        round_trip(&samples);
        round_trip(&[(5, -0.0), (6, 0.0)]);
        round_trip(&[(5, 0.1), (6, 1e15 + 0.5)]);
        round_trip(&[(i64::MIN, -9.007e15), (i64::MAX, 9.007e15)]);
    }

    #[test]
    fn bad_bytes_are_errors() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[0]).is_err());
        let bytes = encode(&[(1, 1.5), (20, 2.25), (300, 3.0)]);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A huge count with no bits behind it is refused, not allocated.
        let mut huge = Vec::new();
        put_varint(&mut huge, u64::MAX);
        assert!(decode(&huge).is_err());
    }

    proptest! {
        #[test]
        fn any_increasing_series_round_trips_bit_for_bit(
            start in any::<i64>(),
            steps in proptest::collection::vec((1i64..1i64 << 40, any::<u64>(), 0u8..4), 0..300),
            first in any::<u64>(),
        ) {
            let mut samples = vec![(start, f64::from_bits(first))];
            let mut t = start;
            for (step, bits, kind) in steps {
                let Some(next) = t.checked_add(step) else { break };
                t = next;
                let v = match kind {
                    0 => f64::from_bits(bits),
                    1 => (bits % 1_000_000) as f64 / 100.0,
                    2 => samples.last().map_or(0.0, |s| s.1),
                    _ => (bits >> 12) as f64,
                };
                samples.push((t, v));
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
