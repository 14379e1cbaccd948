//! Series chunks read back from disk, both kinds: the head's Gorilla chunks and the blocks'
//! packed chunks. Any bytes decode to samples or to an error, never a panic; what decodes has
//! strictly increasing timestamps and encodes again to the same samples, bit for bit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_monitor::chunk::{self, ChunkWriter};
use strata_monitor::packed;

fn assert_same(again: &[(i64, f64)], samples: &[(i64, f64)]) {
    assert_eq!(again.len(), samples.len());
    for (a, b) in again.iter().zip(samples) {
        assert_eq!((a.0, a.1.to_bits()), (b.0, b.1.to_bits()));
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(samples) = chunk::decode(data) {
        assert!(samples.windows(2).all(|w| w[0].0 < w[1].0));
        let mut chunk = ChunkWriter::new();
        for (t, v) in &samples {
            chunk.append(*t, *v).expect("decoded samples are in order");
        }
        assert_same(&chunk::decode(&chunk.bytes()).expect("a written chunk decodes"), &samples);
    }
    if let Ok(samples) = packed::decode(data) {
        assert!(samples.windows(2).all(|w| w[0].0 < w[1].0));
        let again = packed::decode(&packed::encode(&samples)).expect("a packed chunk decodes");
        assert_same(&again, &samples);
    }
});
