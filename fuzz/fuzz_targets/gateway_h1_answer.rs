//! An upstream member's answer as the gateway reads it (its headers in a map, or kept raw, as
//! the first byte says): any bytes give an answer head, a request for more bytes, or an error
//! with a message, never a panic; a head takes exactly its own bytes out of the buffer. What
//! follows the head, read as a chunked body, decodes to data, a request for more, the end, or
//! an error, and the decoder only ever takes bytes it was given.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use strata_gateway::h1::{parse_answer, Chunked, Piece, MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    let head_request = data.first().is_some_and(|b| b & 1 == 1);
    let raw = data.first().is_some_and(|b| b & 2 == 2);
    let mut buf = BytesMut::from(data);
    match parse_answer(&mut buf, head_request, raw) {
        Ok(Some(head)) => {
            assert!(buf.len() < data.len(), "a head takes its bytes");
            assert!(
                data.ends_with(&buf),
                "what is left is what followed the head"
            );
            let _ = head.response.status();
        }
        Ok(None) => {
            assert!(data.len() < MAX_HEAD, "a request for more is bounded");
            assert_eq!(buf.len(), data.len(), "nothing is taken before a whole head");
        }
        Err(error) => assert!(!error.to_string().is_empty(), "a refusal says why"),
    }
    let mut decoder = Chunked::default();
    let mut body = BytesMut::from(data);
    let mut decoded = 0usize;
    loop {
        let before = body.len();
        match decoder.next(&mut body) {
            Ok(Piece::Data(piece)) => {
                assert!(!piece.is_empty(), "a data piece is never empty");
                decoded += piece.len();
                assert!(body.len() < before, "every piece takes bytes");
            }
            Ok(Piece::NeedMore) | Ok(Piece::End) => break,
            Err(error) => {
                assert!(!error.to_string().is_empty(), "a refusal says why");
                break;
            }
        }
    }
    assert!(decoded <= data.len(), "a body is never longer than its bytes");
});
