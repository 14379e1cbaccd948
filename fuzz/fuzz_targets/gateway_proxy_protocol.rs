//! The PROXY protocol reader in front of the gateway's listeners: any bytes give a header, a
//! request for more bytes, or an error with a message, never a panic. A header lies within the
//! input and parses alone to the same header, and every proper prefix of it asks for more (so
//! a reader never has to look past a header's end).

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_gateway::proxy_protocol::parse;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Some((header, used))) => {
            assert!(
                used > 0 && used <= data.len(),
                "a header lies within the input"
            );
            let alone = parse(&data[..used]).expect("a header parses alone");
            assert_eq!(alone, Some((header, used)));
            for end in 0..used {
                assert!(
                    matches!(parse(&data[..end]), Ok(None)),
                    "a proper prefix asks for more"
                );
            }
        }
        // The longest header is 16 + 4096 bytes (v2); a v1 line is at most 107.
        Ok(None) => assert!(data.len() < 16 + 4096, "a request for more is bounded"),
        Err(error) => assert!(!error.to_string().is_empty(), "a refusal says why"),
    }
});
