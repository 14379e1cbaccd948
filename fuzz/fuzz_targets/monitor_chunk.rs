//! Series chunks read back from disk: any bytes decode to samples or to an error, never a
//! panic; what decodes has strictly increasing timestamps and encodes again to the same
//! samples, bit for bit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_monitor::chunk::{decode, ChunkWriter};

fuzz_target!(|data: &[u8]| {
    let Ok(samples) = decode(data) else {
        return;
    };
    assert!(samples.windows(2).all(|w| w[0].0 < w[1].0));
    let mut chunk = ChunkWriter::new();
    for (t, v) in &samples {
        chunk.append(*t, *v).expect("decoded samples are in order");
    }
    let again = decode(&chunk.bytes()).expect("a written chunk decodes");
    assert_eq!(again.len(), samples.len());
    for (a, b) in again.iter().zip(&samples) {
        assert_eq!((a.0, a.1.to_bits()), (b.0, b.1.to_bits()));
    }
});
