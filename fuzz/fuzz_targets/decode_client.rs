//! Feeds untrusted bytes to every decoder of the protocol (docs/protocol.md, "WebSocket transport"):
//! decode_client and decode_server, each as MessagePack and as JSON. None
//! may panic, overflow the stack or allocate without bound; whatever does
//! decode must come back unchanged from an encode → decode round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use viche_protocol::{decode_client, decode_server, encode_client, encode_server, Encoding};

const ENCODINGS: [Encoding; 2] = [Encoding::MsgPack, Encoding::Json];

fuzz_target!(|data: &[u8]| {
    for enc in ENCODINGS {
        if let Ok(frame) = decode_client(data, enc) {
            for enc2 in ENCODINGS {
                let again = decode_client(&encode_client(&frame, enc2), enc2);
                assert_eq!(again.ok().as_ref(), Some(&frame), "client frame round trip in {enc2:?}");
            }
        }
        if let Ok(frame) = decode_server(data, enc) {
            for enc2 in ENCODINGS {
                let again = decode_server(&encode_server(&frame, enc2), enc2);
                assert_eq!(again.ok().as_ref(), Some(&frame), "server frame round trip in {enc2:?}");
            }
        }
    }
});
