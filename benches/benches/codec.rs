//! Encode and decode of the two frames on a message's hot path, in both
//! encodings: `send` (client → server, decoded once per message) and `msg`
//! (server → client, encoded once per encoding in use per message).
//!
//! Run: `cargo bench -p viche-benches --bench codec`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use viche_protocol::{
    decode_client, decode_server, encode_client, encode_server, ClientFrame, Encoding, Msg, ServerFrame,
};

/// A 100-byte ASCII body, the size the benchmarks are specified for.
fn body() -> String {
    let body: String = "The quick brown fox jumps over the lazy dog. ".chars().cycle().take(100).collect();
    assert_eq!(body.len(), 100);
    body
}

fn msg_frame() -> ServerFrame {
    ServerFrame::Msg(Msg {
        room: "general".into(),
        seq: 1_234_567,
        from: "alice".into(),
        body: body(),
        cid: "c-0123456789abcdef".into(),
        ts: 1_764_000_000_000,
        ..Msg::default()
    })
}

fn send_frame() -> ClientFrame {
    ClientFrame::Send {
        req: 42,
        room: "general".into(),
        body: body(),
        cid: "c-0123456789abcdef".into(),
        reply_to: None,
    }
}

fn encodings() -> [(&'static str, Encoding); 2] {
    [("msgpack", Encoding::MsgPack), ("json", Encoding::Json)]
}

fn codec(c: &mut Criterion) {
    let msg = msg_frame();
    let send = send_frame();

    let mut g = c.benchmark_group("codec");
    for (name, enc) in encodings() {
        let msg_bytes = encode_server(&msg, enc);
        let send_bytes = encode_client(&send, enc);
        // The benchmark is only meaningful if the round trip is exact.
        assert_eq!(decode_server(&msg_bytes, enc).unwrap(), msg);
        assert_eq!(decode_client(&send_bytes, enc).unwrap(), send);
        eprintln!("codec bench: {name}: msg frame {} bytes, send frame {} bytes", msg_bytes.len(), send_bytes.len());

        g.bench_function(format!("encode_msg/{name}"), |b| b.iter(|| encode_server(black_box(&msg), enc)));
        g.bench_function(format!("decode_msg/{name}"), |b| {
            b.iter(|| decode_server(black_box(&msg_bytes), enc).unwrap())
        });
        g.bench_function(format!("encode_send/{name}"), |b| b.iter(|| encode_client(black_box(&send), enc)));
        g.bench_function(format!("decode_send/{name}"), |b| {
            b.iter(|| decode_client(black_box(&send_bytes), enc).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
