//! Property tests of the codec (docs/protocol.md: transport and frames).
//!
//! 1. Every frame, client and server, survives encode → decode in both
//!    encodings.
//! 2. Decoding never panics, whatever the input: raw bytes, damaged valid
//!    frames, and random maps with a `t` drawn from the real types and junk.
//!    When such an input does decode, re-encoding it decodes to the same frame.
//! 3. A valid frame with extra unknown keys (anywhere in the map, with values
//!    of any type) decodes to the same frame (docs/protocol.md: "Unknown keys are ignored").
//!
//! MessagePack inputs are written by a small hand-rolled encoder (below), so
//! that they can hold what serde would never produce: bin, ext, negative and
//! float numbers, non-string keys, invalid UTF-8, odd integer widths.

use proptest::collection::vec;
use proptest::prelude::*;
use viche_protocol::{
    decode_client, decode_server, encode_client, encode_server, ClientFrame, Conversation, Encoding, ErrorCode, Msg,
    MsgKind, ServerFrame,
};

const ENCODINGS: [Encoding; 2] = [Encoding::MsgPack, Encoding::Json];

/// Every key a client or server frame may carry.
const KNOWN_KEYS: &[&str] = &[
    "t",
    "ref",
    "v",
    "token",
    "room",
    "since",
    "body",
    "cid",
    "to",
    "before",
    "limit",
    "session",
    "user",
    "heartbeat_ms",
    "max_frame",
    "max_body",
    "seq",
    "members",
    "more",
    "ts",
    "from",
    "online",
    "messages",
    "code",
    "message",
    "members_total",
    "first_seq",
    "truncated",
    "after",
    "users",
    "forget",
    "reply_to",
    "target",
    "emoji",
    "on",
    "kind",
    "edited_ts",
    "deleted",
    "reactions",
    "features",
    "items",
    "peer",
    "last_seq",
    "last_ts",
    "last",
    "read_seq",
    "unread",
];

const CLIENT_TYPES: &[&str] = &[
    "hello",
    "auth",
    "join",
    "leave",
    "send",
    "dm",
    "typing",
    "history",
    "ping",
    "members",
    "edit",
    "delete",
    "react",
    "read",
    "conversations",
];
const SERVER_TYPES: &[&str] = &[
    "welcome",
    "ok",
    "ack",
    "msg",
    "presence",
    "typing",
    "history",
    "error",
    "pong",
    "members",
    "read",
    "conversations",
];

// ---------------------------------------------------------------------------
// Strategies for frames.

/// Mostly short strings, now and then empty, long, or full of odd characters.
fn text() -> BoxedStrategy<String> {
    prop_oneof![
        4 => "[A-Za-z0-9_.-]{0,16}",
        3 => any::<String>(),
        1 => Just(String::new()),
        1 => "\\PC{100,300}",
        1 => "[\"\\\\/\u{0}-\u{1f}\u{7f}\u{fffd}\u{10ffff}]{1,8}",
    ]
    .boxed()
}

/// Integers, with the edges (0, i64 and u64 boundaries, msgpack widths) weighted up.
fn int() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => any::<u64>(),
        2 => 0u64..300,
        1 => prop::sample::select(vec![
            0,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as u64,
            u32::MAX as u64 + 1,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX,
        ]),
    ]
}

fn opt_int() -> impl Strategy<Value = Option<u64>> {
    prop::option::of(int())
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(ErrorCode::ALL.to_vec())
}

/// The v1.1 event fields of a `msg`: kind, target, reply_to, emoji, on.
type MsgExtras = (Option<MsgKind>, Option<u64>, Option<u64>, Option<String>, Option<bool>);

/// The v1.1 fields of a `msg`, each present or not.
fn msg_extras() -> impl Strategy<Value = MsgExtras> {
    (
        prop::option::of(prop::sample::select(vec![MsgKind::Edit, MsgKind::Delete, MsgKind::Reaction])),
        opt_int(),
        opt_int(),
        prop::option::of(text()),
        prop::option::of(any::<bool>()),
    )
}

fn msg() -> BoxedStrategy<Msg> {
    (
        (text(), int(), text(), text(), text(), int()),
        msg_extras(),
        (
            opt_int(),
            prop::option::of(any::<bool>()),
            prop::option::of(prop::collection::btree_map(text(), vec(text(), 0..3), 0..3)),
        ),
    )
        .prop_map(
            |(
                (room, seq, from, body, cid, ts),
                (kind, target, reply_to, emoji, on),
                (edited_ts, deleted, reactions),
            )| Msg {
                room,
                seq,
                from,
                body,
                cid,
                ts,
                kind,
                target,
                reply_to,
                emoji,
                on,
                edited_ts,
                deleted,
                reactions,
            },
        )
        .boxed()
}

fn conversation() -> BoxedStrategy<Conversation> {
    (text(), text(), prop::option::of(text()), int(), int(), prop::option::of(msg()), int(), int())
        .prop_map(|(room, kind, peer, last_seq, last_ts, last, read_seq, unread)| Conversation {
            room,
            kind,
            peer,
            last_seq,
            last_ts,
            last,
            read_seq,
            unread,
        })
        .boxed()
}

fn client_frame() -> BoxedStrategy<ClientFrame> {
    prop_oneof![
        (int(), text()).prop_map(|(v, token)| ClientFrame::Hello { v, token }),
        (int(), text()).prop_map(|(req, token)| ClientFrame::Auth { req, token }),
        (int(), text(), opt_int()).prop_map(|(req, room, since)| ClientFrame::Join { req, room, since }),
        (int(), text(), prop::option::of(any::<bool>())).prop_map(|(req, room, forget)| ClientFrame::Leave {
            req,
            room,
            forget
        }),
        (int(), text(), text(), text(), opt_int()).prop_map(|(req, room, body, cid, reply_to)| ClientFrame::Send {
            req,
            room,
            body,
            cid,
            reply_to
        }),
        (int(), text(), text(), text(), opt_int()).prop_map(|(req, to, body, cid, reply_to)| ClientFrame::Dm {
            req,
            to,
            body,
            cid,
            reply_to
        }),
        (int(), text(), int(), text(), text()).prop_map(|(req, room, target, body, cid)| ClientFrame::Edit {
            req,
            room,
            target,
            body,
            cid
        }),
        (int(), text(), int(), text()).prop_map(|(req, room, target, cid)| ClientFrame::Delete {
            req,
            room,
            target,
            cid
        }),
        (int(), text(), int(), text(), any::<bool>(), text()).prop_map(|(req, room, target, emoji, on, cid)| {
            ClientFrame::React { req, room, target, emoji, on, cid }
        }),
        (int(), text(), int()).prop_map(|(req, room, seq)| ClientFrame::Read { req, room, seq }),
        (int(), opt_int(), opt_int()).prop_map(|(req, before, limit)| ClientFrame::Conversations {
            req,
            before,
            limit
        }),
        text().prop_map(|room| ClientFrame::Typing { room }),
        (int(), text(), opt_int(), opt_int()).prop_map(|(req, room, before, limit)| ClientFrame::History {
            req,
            room,
            before,
            limit
        }),
        int().prop_map(|req| ClientFrame::Ping { req }),
        (int(), text(), prop::option::of(text())).prop_map(|(req, room, after)| ClientFrame::Members {
            req,
            room,
            after
        }),
    ]
    .boxed()
}

fn server_frame() -> BoxedStrategy<ServerFrame> {
    prop_oneof![
        (int(), text(), text(), int(), int(), int(), vec(text(), 0..4)).prop_map(
            |(v, session, user, heartbeat_ms, max_frame, max_body, features)| ServerFrame::Welcome {
                v,
                session,
                user,
                heartbeat_ms,
                max_frame,
                max_body,
                features
            }
        ),
        // Every combination of the optional fields of `ok`: plain, and for `join`.
        (
            int(),
            prop::option::of(text()),
            opt_int(),
            prop::option::of(vec(text(), 0..5)),
            prop::option::of(any::<bool>()),
            opt_int(),
            opt_int(),
            prop::option::of(any::<bool>())
        )
            .prop_map(|(req, room, seq, members, more, members_total, first_seq, truncated)| ServerFrame::Ok {
                req,
                room,
                seq,
                members,
                more,
                members_total,
                first_seq,
                truncated
            }),
        (int(), text(), int(), text(), int()).prop_map(|(req, room, seq, cid, ts)| ServerFrame::Ack {
            req,
            room,
            seq,
            cid,
            ts
        }),
        msg().prop_map(ServerFrame::Msg),
        (text(), text(), any::<bool>()).prop_map(|(room, user, online)| ServerFrame::Presence { room, user, online }),
        (text(), text()).prop_map(|(room, user)| ServerFrame::Typing { room, user }),
        // Empty pages too.
        (int(), text(), vec(msg(), 0..5), any::<bool>()).prop_map(|(req, room, messages, more)| ServerFrame::History {
            req,
            room,
            messages,
            more
        }),
        // `error` with and without `ref`.
        (opt_int(), error_code(), text()).prop_map(|(req, code, message)| ServerFrame::Error { req, code, message }),
        (error_code(), text()).prop_map(|(code, message)| ServerFrame::Error { req: None, code, message }),
        int().prop_map(|req| ServerFrame::Pong { req }),
        (int(), text(), vec(text(), 0..5), any::<bool>()).prop_map(|(req, room, users, more)| ServerFrame::Members {
            req,
            room,
            users,
            more
        }),
        (text(), int()).prop_map(|(room, seq)| ServerFrame::Read { room, seq }),
        (int(), vec(conversation(), 0..4), any::<bool>()).prop_map(|(req, items, more)| ServerFrame::Conversations {
            req,
            items,
            more
        }),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------
// A value tree that can be written as MessagePack or JSON.

#[derive(Debug, Clone)]
enum V {
    Nil,
    Bool(bool),
    UInt(u64),
    Int(i64),
    F32(f32),
    F64(f64),
    Str(String),
    /// A msgpack str whose bytes need not be UTF-8.
    RawStr(Vec<u8>),
    Bin(Vec<u8>),
    Ext(i8, Vec<u8>),
    Arr(Vec<V>),
    Map(Vec<(V, V)>),
}

/// Scalars of every kind.
fn leaf() -> impl Strategy<Value = V> {
    prop_oneof![
        Just(V::Nil),
        any::<bool>().prop_map(V::Bool),
        int().prop_map(V::UInt),
        any::<i64>().prop_map(V::Int),
        any::<f32>().prop_map(V::F32),
        any::<f64>().prop_map(V::F64),
        text().prop_map(V::Str),
        vec(any::<u8>(), 0..12).prop_map(V::RawStr),
        vec(any::<u8>(), 0..12).prop_map(V::Bin),
        (any::<i8>(), prop::sample::select(vec![1usize, 2, 4, 8, 16, 0, 3, 17, 300])).prop_flat_map(|(ty, n)| vec(
            any::<u8>(),
            n
        )
        .prop_map(move |d| V::Ext(ty, d))),
    ]
}

/// Any value, nested a few levels.
fn value() -> BoxedStrategy<V> {
    leaf()
        .prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(V::Arr),
                vec((prop_oneof![3 => text().prop_map(V::Str), 1 => inner.clone()], inner), 0..6).prop_map(V::Map),
            ]
        })
        .boxed()
}

/// A value of a type some field of some frame has (so decoding sometimes succeeds).
fn plausible_value() -> BoxedStrategy<V> {
    prop_oneof![
        int().prop_map(V::UInt),
        text().prop_map(V::Str),
        any::<bool>().prop_map(V::Bool),
        vec(text().prop_map(V::Str), 0..3).prop_map(V::Arr),
        error_code().prop_map(|c| V::Str(c.as_str().to_owned())),
        msg().prop_map(|m| {
            let V::Map(mut entries) = from_json(&serde_json::to_value(&m).unwrap()) else { unreachable!() };
            entries.push((V::Str("t".into()), V::Str("msg".into())));
            V::Arr(vec![V::Map(entries)])
        }),
    ]
    .boxed()
}

/// A key that no frame uses.
fn unknown_key() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z_]{1,12}", any::<String>(), Just(String::new()), Just("T".to_owned()), Just("Ref".to_owned())]
        .prop_filter("must not be a known key", |k| !KNOWN_KEYS.contains(&k.as_str()))
}

fn from_json(j: &serde_json::Value) -> V {
    use serde_json::Value as J;
    match j {
        J::Null => V::Nil,
        J::Bool(b) => V::Bool(*b),
        J::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => V::UInt(u),
            (None, Some(i)) => V::Int(i),
            _ => V::F64(n.as_f64().unwrap()),
        },
        J::String(s) => V::Str(s.clone()),
        J::Array(a) => V::Arr(a.iter().map(from_json).collect()),
        J::Object(o) => V::Map(o.iter().map(|(k, v)| (V::Str(k.clone()), from_json(v))).collect()),
    }
}

fn len_header(out: &mut Vec<u8>, n: usize, fix: Option<(u8, usize)>, m8: Option<u8>, m16: u8, m32: u8) {
    match fix {
        Some((base, max)) if n <= max => out.push(base | n as u8),
        _ => match m8 {
            Some(m) if n <= 0xff => out.extend([m, n as u8]),
            _ if n <= 0xffff => {
                out.push(m16);
                out.extend((n as u16).to_be_bytes());
            }
            _ => {
                out.push(m32);
                out.extend((n as u32).to_be_bytes());
            }
        },
    }
}

/// MessagePack, each value in its smallest form.
fn to_msgpack(v: &V, out: &mut Vec<u8>) {
    match v {
        V::Nil => out.push(0xc0),
        V::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        V::UInt(u) => match *u {
            0..=0x7f => out.push(*u as u8),
            0x80..=0xff => out.extend([0xcc, *u as u8]),
            0x100..=0xffff => {
                out.push(0xcd);
                out.extend((*u as u16).to_be_bytes());
            }
            0x1_0000..=0xffff_ffff => {
                out.push(0xce);
                out.extend((*u as u32).to_be_bytes());
            }
            _ => {
                out.push(0xcf);
                out.extend(u.to_be_bytes());
            }
        },
        V::Int(i) => match *i {
            0.. => to_msgpack(&V::UInt(*i as u64), out),
            -32..=-1 => out.push(*i as i8 as u8),
            -128..=-33 => out.extend([0xd0, *i as i8 as u8]),
            -32_768..=-129 => {
                out.push(0xd1);
                out.extend((*i as i16).to_be_bytes());
            }
            -2_147_483_648..=-32_769 => {
                out.push(0xd2);
                out.extend((*i as i32).to_be_bytes());
            }
            _ => {
                out.push(0xd3);
                out.extend(i.to_be_bytes());
            }
        },
        V::F32(f) => {
            out.push(0xca);
            out.extend(f.to_be_bytes());
        }
        V::F64(f) => {
            out.push(0xcb);
            out.extend(f.to_be_bytes());
        }
        V::Str(s) => to_msgpack(&V::RawStr(s.as_bytes().to_vec()), out),
        V::RawStr(b) => {
            len_header(out, b.len(), Some((0xa0, 31)), Some(0xd9), 0xda, 0xdb);
            out.extend(b);
        }
        V::Bin(b) => {
            len_header(out, b.len(), None, Some(0xc4), 0xc5, 0xc6);
            out.extend(b);
        }
        V::Ext(ty, d) => {
            match d.len() {
                1 => out.push(0xd4),
                2 => out.push(0xd5),
                4 => out.push(0xd6),
                8 => out.push(0xd7),
                16 => out.push(0xd8),
                n => len_header(out, n, None, Some(0xc7), 0xc8, 0xc9),
            }
            out.push(*ty as u8);
            out.extend(d);
        }
        V::Arr(a) => {
            len_header(out, a.len(), Some((0x90, 15)), None, 0xdc, 0xdd);
            a.iter().for_each(|x| to_msgpack(x, out));
        }
        V::Map(m) => {
            len_header(out, m.len(), Some((0x80, 15)), None, 0xde, 0xdf);
            for (k, x) in m {
                to_msgpack(k, out);
                to_msgpack(x, out);
            }
        }
    }
}

/// JSON, keys in the order given (duplicates kept). What JSON cannot hold
/// becomes its nearest JSON form: bin and ext become arrays of numbers,
/// non-finite floats `null`, non-string keys strings.
fn to_json(v: &V, out: &mut String) {
    let q = |s: &str| serde_json::to_string(s).unwrap();
    match v {
        V::Nil => out.push_str("null"),
        V::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        V::UInt(u) => out.push_str(&u.to_string()),
        V::Int(i) => out.push_str(&i.to_string()),
        V::F32(f) => to_json(&V::F64(*f as f64), out),
        V::F64(f) => out.push_str(&serde_json::to_string(f).unwrap()),
        V::Str(s) => out.push_str(&q(s)),
        V::RawStr(b) => out.push_str(&q(&String::from_utf8_lossy(b))),
        V::Bin(b) | V::Ext(_, b) => to_json(&V::Arr(b.iter().map(|x| V::UInt(*x as u64)).collect()), out),
        V::Arr(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                to_json(x, out);
            }
            out.push(']');
        }
        V::Map(m) => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match k {
                    V::Str(s) => out.push_str(&q(s)),
                    other => {
                        let mut s = String::new();
                        to_json(other, &mut s);
                        out.push_str(&q(&s));
                    }
                }
                out.push(':');
                to_json(x, out);
            }
            out.push('}');
        }
    }
}

fn encode_v(v: &V, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::MsgPack => {
            let mut out = Vec::new();
            to_msgpack(v, &mut out);
            out
        }
        Encoding::Json => {
            let mut out = String::new();
            to_json(v, &mut out);
            out.into_bytes()
        }
    }
}

/// A frame's map entries, in serialization order for msgpack (via JSON value: sorted).
/// A frame's entries, sorted by key (explicitly: whether serde_json's map
/// keeps insertion order depends on features other crates turn on).
fn entries_of<T: serde::Serialize>(frame: &T) -> Vec<(V, V)> {
    match from_json(&serde_json::to_value(frame).unwrap()) {
        V::Map(mut entries) => {
            entries.sort_by(|a, b| match (&a.0, &b.0) {
                (V::Str(x), V::Str(y)) => x.cmp(y),
                _ => std::cmp::Ordering::Equal,
            });
            entries
        }
        other => panic!("a frame is a map, not {other:?}"),
    }
}

/// A frame's entries plus unknown ones, shuffled (so `t` may come anywhere).
fn with_extras<T: serde::Serialize + std::fmt::Debug + Clone>(
    frame: impl Strategy<Value = T>,
) -> impl Strategy<Value = (T, V)> {
    (frame, vec((unknown_key(), value()), 1..5)).prop_flat_map(|(frame, extras)| {
        let mut entries = entries_of(&frame);
        // Distinct keys: a repeated unknown key is fine for serde but JSON
        // objects with duplicates are a grey zone we do not test here.
        let mut seen = std::collections::HashSet::new();
        for (k, x) in extras {
            if seen.insert(k.clone()) {
                entries.push((V::Str(k), x));
            }
        }
        Just(entries).prop_shuffle().prop_map(move |e| (frame.clone(), V::Map(e)))
    })
}

/// A map shaped like a frame: `t` from the real types (or junk, or absent),
/// known keys with plausible or arbitrary values, unknown keys.
fn frame_like_map() -> BoxedStrategy<V> {
    let t = prop_oneof![
        4 => prop::sample::select([CLIENT_TYPES, SERVER_TYPES].concat()).prop_map(|t| V::Str(t.to_owned())),
        1 => prop::sample::select(vec!["", "Ping", "PING", "ping ", "msg\u{0}", "unknown"]).prop_map(|t| V::Str(t.to_owned())),
        1 => value(),
    ];
    let known = vec(
        (
            prop::sample::select(KNOWN_KEYS.to_vec()).prop_map(|k| V::Str(k.to_owned())),
            prop_oneof![3 => plausible_value(), 1 => value()],
        ),
        0..8,
    );
    let unknown = vec((unknown_key().prop_map(V::Str), value()), 0..3);
    (prop::option::of(t), known, unknown)
        .prop_flat_map(|(t, known, unknown)| {
            let mut entries: Vec<(V, V)> = t.into_iter().map(|t| (V::Str("t".into()), t)).collect();
            entries.extend(known);
            entries.extend(unknown);
            Just(entries).prop_shuffle().prop_map(V::Map)
        })
        .boxed()
}

/// A real frame's map, damaged: entries dropped or given other values, `t`
/// swapped for another real type, known keys added, order shuffled.
fn mutated_frame_map() -> BoxedStrategy<V> {
    let entries =
        prop_oneof![client_frame().prop_map(|f| entries_of(&f)), server_frame().prop_map(|f| entries_of(&f)),];
    let t = prop::sample::select([CLIENT_TYPES, SERVER_TYPES].concat());
    (entries, prop::option::of(t), vec((0u8..10, prop_oneof![plausible_value(), value()]), 8), frame_like_map())
        .prop_flat_map(|(entries, t, edits, added)| {
            let mut out = Vec::new();
            for ((k, x), (what, other)) in entries.into_iter().zip(edits.into_iter().cycle()) {
                match (&k, what) {
                    (V::Str(key), _) if key == "t" => out.push((k, t.map_or(x, |t| V::Str(t.to_owned())))),
                    (_, 0) => {}
                    (_, 1 | 2) => out.push((k, other)),
                    _ => out.push((k, x)),
                }
            }
            if let V::Map(added) = added {
                // Only the first added entry, so most frames stay close to valid.
                out.extend(added.into_iter().filter(|(k, _)| !matches!(k, V::Str(s) if s == "t")).take(1));
            }
            Just(out).prop_shuffle().prop_map(V::Map)
        })
        .boxed()
}

/// Decodes in every way; whatever decodes must survive a round trip.
fn decode_all_ways(bytes: &[u8]) -> Result<(), TestCaseError> {
    for enc in ENCODINGS {
        if let Ok(f) = decode_client(bytes, enc) {
            for enc2 in ENCODINGS {
                prop_assert_eq!(decode_client(&encode_client(&f, enc2), enc2).unwrap(), f.clone());
            }
        }
        if let Ok(f) = decode_server(bytes, enc) {
            for enc2 in ENCODINGS {
                prop_assert_eq!(decode_server(&encode_server(&f, enc2), enc2).unwrap(), f.clone());
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// (1) Round trips.

proptest! {
    #[test]
    fn client_frames_round_trip(frame in client_frame()) {
        for enc in ENCODINGS {
            let bytes = encode_client(&frame, enc);
            prop_assert_eq!(decode_client(&bytes, enc).unwrap(), frame.clone(), "{:?}", enc);
        }
    }

    #[test]
    fn server_frames_round_trip(frame in server_frame()) {
        for enc in ENCODINGS {
            let bytes = encode_server(&frame, enc);
            prop_assert_eq!(decode_server(&bytes, enc).unwrap(), frame.clone(), "{:?}", enc);
        }
    }

    /// Our own msgpack writer gives the same frame as rmp-serde's: the
    /// decoder does not depend on integer widths or key order.
    #[test]
    fn frames_decode_from_any_key_order(frame in client_frame(), sframe in server_frame(), seed in any::<u64>()) {
        let mut ce = entries_of(&frame);
        let mut se = entries_of(&sframe);
        let n = ce.len();
        ce.rotate_left(seed as usize % n);
        let n = se.len();
        se.rotate_left((seed >> 32) as usize % n);
        for enc in ENCODINGS {
            prop_assert_eq!(decode_client(&encode_v(&V::Map(ce.clone()), enc), enc).unwrap(), frame.clone());
            prop_assert_eq!(decode_server(&encode_v(&V::Map(se.clone()), enc), enc).unwrap(), sframe.clone());
        }
    }
}

// ---------------------------------------------------------------------------
// (2) Decoding never panics.

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        decode_all_ways(&bytes)?;
    }

    /// Bytes that start like a msgpack map or a JSON object go further into the decoder.
    #[test]
    fn arbitrary_bytes_after_a_map_header_never_panic(
        head in prop::sample::select(vec![&b"\x81\xa1t"[..], b"\x83\xa1t\xa4ping", b"\xdf\xff\xff\xff\xff", b"{\"t\":", b"{\"t\":\"send\",\"ref\":"]),
        tail in vec(any::<u8>(), 0..128),
    ) {
        decode_all_ways(&[head, &tail[..]].concat())?;
    }

    #[test]
    fn arbitrary_values_never_panic(v in value()) {
        for enc in ENCODINGS {
            decode_all_ways(&encode_v(&v, enc))?;
        }
    }

    #[test]
    fn frame_like_maps_never_panic(v in prop_oneof![frame_like_map(), mutated_frame_map()]) {
        for enc in ENCODINGS {
            decode_all_ways(&encode_v(&v, enc))?;
        }
    }

    /// Valid frames, truncated or with one byte changed.
    #[test]
    fn damaged_frames_never_panic(
        frame in server_frame(),
        cframe in client_frame(),
        cut in any::<prop::sample::Index>(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        for enc in ENCODINGS {
            for bytes in [encode_server(&frame, enc).to_vec(), encode_client(&cframe, enc).to_vec()] {
                decode_all_ways(&bytes[..cut.index(bytes.len() + 1)])?;
                let mut flipped = bytes.clone();
                flipped[at.index(bytes.len())] = byte;
                decode_all_ways(&flipped)?;
            }
        }
    }
}

// ---------------------------------------------------------------------------
// (3) Unknown keys are ignored.

proptest! {
    #[test]
    fn client_frames_ignore_unknown_keys((frame, v) in with_extras(client_frame())) {
        for enc in ENCODINGS {
            let decoded = decode_client(&encode_v(&v, enc), enc);
            prop_assert_eq!(decoded.as_ref().ok(), Some(&frame), "{:?}: {:?}", enc, decoded);
        }
    }

    #[test]
    fn server_frames_ignore_unknown_keys((frame, v) in with_extras(server_frame())) {
        for enc in ENCODINGS {
            let decoded = decode_server(&encode_v(&v, enc), enc);
            prop_assert_eq!(decoded.as_ref().ok(), Some(&frame), "{:?}: {:?}", enc, decoded);
        }
    }
}

// ---------------------------------------------------------------------------
// Fixed cases.

/// Regression: deep nesting under an unknown key must be ignored or
/// rejected, never overflow the stack (an abort that takes the whole server
/// down). With rmp-serde's default depth limit (1024), 800 nested msgpack
/// arrays overflowed a 2 MiB stack (a tokio worker's) in a debug build; the
/// codec now limits msgpack nesting to 128, as serde_json does for JSON.
#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            for depth in [1usize, 100, 125, 126, 127, 128, 129, 800, 1000, 1023, 1024, 1025, 100_000] {
                // msgpack: {"t":"ping","ref":1,"x":[[[...nil...]]]}, and a bare nesting of maps.
                let mut mp = b"\x83\xa1t\xa4ping\xa3ref\x01\xa1x".to_vec();
                mp.extend(std::iter::repeat_n(0x91, depth));
                mp.push(0xc0);
                let client = decode_client(&mp, Encoding::MsgPack);
                let _ = decode_server(&mp, Encoding::MsgPack);
                let bare = [vec![0x81u8; depth], vec![0xc0]].concat();
                assert!(decode_client(&bare, Encoding::MsgPack).is_err());

                let json = format!(r#"{{"t":"ping","ref":1,"x":{}null{}}}"#, "[".repeat(depth), "]".repeat(depth));
                let client_json = decode_client(json.as_bytes(), Encoding::Json);
                let _ = decode_server(json.as_bytes(), Encoding::Json);

                // Well within the limits, the unknown key is simply ignored;
                // well past them, the frame is an error.
                let ping = ClientFrame::Ping { req: 1 };
                if depth <= 100 {
                    assert_eq!(client.as_ref().ok(), Some(&ping), "msgpack, depth {depth}");
                    assert_eq!(client_json.as_ref().ok(), Some(&ping), "json, depth {depth}");
                }
                if depth >= 200 {
                    assert!(client.is_err(), "msgpack, depth {depth}");
                    assert!(client_json.is_err(), "json, depth {depth}");
                }
            }
        })
        .unwrap()
        .join()
        .expect("decoding deep nesting panicked");
}

/// Length headers that promise far more than the input holds.
#[test]
fn huge_length_headers_are_rejected() {
    for bytes in [
        &b"\xdf\xff\xff\xff\xff"[..],
        b"\x82\xa1t\xa4ping\xa1x\xdd\xff\xff\xff\xff",
        b"\x82\xa1t\xa4ping\xa1x\xc6\xff\xff\xff\xff",
        b"\x82\xa1t\xa4ping\xa1x\xdb\xff\xff\xff\xff",
        b"\x82\xa1t\xa4ping\xa1x\xc9\xff\xff\xff\xff\x01",
    ] {
        assert!(decode_client(bytes, Encoding::MsgPack).is_err());
        assert!(decode_server(bytes, Encoding::MsgPack).is_err());
    }
}

/// Spot checks of the test's own writers against the codec.
#[test]
fn writers_agree_with_the_codec() {
    let f = ClientFrame::Ping { req: 5 };
    // entries_of sorts keys: {"ref":5,"t":"ping"}.
    let v = V::Map(entries_of(&f));
    assert_eq!(encode_v(&v, Encoding::MsgPack), b"\x82\xa3ref\x05\xa1t\xa4ping");
    assert_eq!(encode_v(&v, Encoding::Json), br#"{"ref":5,"t":"ping"}"#);
    let big = V::Map(vec![(V::Str("t".into()), V::Str("pong".into())), (V::Str("ref".into()), V::UInt(u64::MAX))]);
    for enc in ENCODINGS {
        assert_eq!(decode_server(&encode_v(&big, enc), enc).unwrap(), ServerFrame::Pong { req: u64::MAX });
    }
}
