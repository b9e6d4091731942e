//! Raw sockets for the hostile clients: a TCP connection with a chosen
//! receive buffer and source address, a WebSocket handshake and frames
//! written and parsed by hand, so that a client can stop reading (and the
//! kernel's small receive buffer fills) at a moment of its choosing.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, timeout_at, Instant};
use viche_protocol::{decode_server, encode_client, ClientFrame, Encoding, ServerFrame};

pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A server frame larger than this ends the connection as an error (the
/// server's own frames are far smaller).
const FRAME_MAX: usize = 16 << 20;

/// The server's address for a source address (same family).
pub async fn resolve(host: &str, port: u16, source: Option<IpAddr>) -> std::io::Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host((host, port)).await?;
    addrs.find(|a| source.is_none_or(|s| s.is_ipv4() == a.is_ipv4())).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, format!("no address of {host} for {source:?}"))
    })
}

/// Connects to `addr`, from `source` when given, with SO_RCVBUF set to
/// `rcvbuf` before connecting (so the window it advertises is small).
pub async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    rcvbuf: Option<u32>,
    within: Duration,
) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = timeout(within, socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A WebSocket client connection over a raw stream.
pub struct RawWs {
    pub stream: TcpStream,
    /// Bytes read and not yet parsed start at `pos`.
    buf: Vec<u8>,
    pos: usize,
    next_ref: u64,
}

/// One client frame: FIN, `opcode`, masked `payload` (RFC 6455 §5.3).
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask: [u8; 4] = rand::random();
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// How a raw connection ended, as its reader saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// A close frame (its code, if it had one).
    Close(Option<u16>),
    /// EOF without a close frame.
    Eof,
    /// A read error (reset, …).
    Error(std::io::ErrorKind),
}

impl RawWs {
    /// Sends the upgrade request for `/ws` and reads the answer's head;
    /// `Err` names the refusal (`HTTP 503`, a transport error, …).
    pub async fn upgrade(mut stream: TcpStream, host: &str, within: Duration) -> Result<RawWs, String> {
        let key: [u8; 16] = rand::random();
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let deadline = Instant::now() + within;
        timeout_at(deadline, stream.write_all(request.as_bytes()))
            .await
            .map_err(|_| "upgrade: timed out writing".to_string())?
            .map_err(|e| format!("upgrade: write {:?}", e.kind()))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                return Err("upgrade: answer head too large".into());
            }
            let n = timeout_at(deadline, stream.read(&mut chunk))
                .await
                .map_err(|_| "upgrade: timed out".to_string())?
                .map_err(|e| format!("upgrade: read {:?}", e.kind()))?;
            if n == 0 {
                return Err("upgrade: closed without an answer".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
        if status != "101" {
            return Err(format!("refused: HTTP {status}"));
        }
        Ok(RawWs { stream, buf, pos: head_end, next_ref: 1 })
    }

    pub fn alloc_ref(&mut self) -> u64 {
        let r = self.next_ref;
        self.next_ref += 1;
        r
    }

    /// Writes one frame (masked) within `within`.
    pub async fn send(&mut self, opcode: u8, payload: &[u8], within: Duration) -> std::io::Result<()> {
        let bytes = client_frame(opcode, payload);
        timeout(within, self.stream.write_all(&bytes))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write timed out"))?
    }

    /// Writes a protocol frame, MessagePack.
    pub async fn send_frame(&mut self, frame: &ClientFrame, within: Duration) -> std::io::Result<()> {
        let bytes = encode_client(frame, Encoding::MsgPack);
        self.send(OP_BINARY, &bytes, within).await
    }

    /// A complete frame from the buffer: (opcode, payload).
    fn parse(&mut self) -> std::io::Result<Option<(u8, Vec<u8>)>> {
        let b = &self.buf[self.pos..];
        if b.len() < 2 {
            return Ok(None);
        }
        let opcode = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => {
                let mut x = [0u8; 8];
                x.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(x).min(u64::MAX >> 1) as usize, 10)
            }
            126 | 127 => return Ok(None),
            n => (n as usize, 2),
        };
        if len > FRAME_MAX {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "server frame too large"));
        }
        let mask = if masked {
            if b.len() < at + 4 {
                return Ok(None);
            }
            let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(m)
        } else {
            None
        };
        if b.len() < at + len {
            return Ok(None);
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(m) = mask {
            payload.iter_mut().enumerate().for_each(|(i, x)| *x ^= m[i % 4]);
        }
        self.pos += at + len;
        Ok(Some((opcode, payload)))
    }

    /// The next frame, reading as needed until `deadline`: `Ok(None)` at
    /// the deadline, `Err(end)` when the connection ended.
    pub async fn read_frame(&mut self, deadline: Instant) -> Result<Option<(u8, Vec<u8>)>, End> {
        loop {
            match self.parse() {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) => {}
                Err(e) => return Err(End::Error(e.kind())),
            }
            // Parsed bytes go before reading more (not after each frame).
            self.buf.drain(..self.pos);
            self.pos = 0;
            self.buf.reserve(64 * 1024);
            match timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => return Ok(None),
                Ok(Ok(0)) => return Err(End::Eof),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(End::Error(e.kind())),
            }
        }
    }

    /// The next protocol frame (pings, pongs skipped; a close is `Err`).
    pub async fn read_server_frame(&mut self, deadline: Instant) -> Result<Option<ServerFrame>, String> {
        loop {
            match self.read_frame(deadline).await {
                Ok(None) => return Ok(None),
                Ok(Some((OP_CLOSE, payload))) => return Err(format!("closed {}", close_code(&payload))),
                Ok(Some((OP_BINARY | OP_TEXT, payload))) => {
                    let encoding = Encoding::MsgPack;
                    return decode_server(&payload, encoding).map(Some).map_err(|e| format!("undecodable frame: {e}"));
                }
                Ok(Some(_)) => continue,
                Err(end) => return Err(end_name(&end)),
            }
        }
    }

    /// Reads (and throws away) everything until the connection ends, at
    /// most until `deadline` and `max_bytes`: how the server ended it, and
    /// the bytes read.
    pub async fn drain(&mut self, deadline: Instant, max_bytes: usize) -> (Option<End>, usize) {
        let mut read = 0usize;
        loop {
            match self.read_frame(deadline).await {
                Ok(None) => return (None, read),
                Ok(Some((OP_CLOSE, payload))) => {
                    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return (Some(End::Close(code)), read + payload.len());
                }
                Ok(Some((_, payload))) => {
                    read += payload.len();
                    if read > max_bytes {
                        return (None, read);
                    }
                }
                Err(end) => return (Some(end), read),
            }
        }
    }
}

/// The code of a close frame's payload, or `none`.
pub fn close_code(payload: &[u8]) -> String {
    if payload.len() >= 2 {
        u16::from_be_bytes([payload[0], payload[1]]).to_string()
    } else {
        "none".into()
    }
}

pub fn end_name(end: &End) -> String {
    match end {
        End::Close(Some(code)) => format!("closed {code}"),
        End::Close(None) => "closed (no code)".into(),
        End::Eof => "ended without a close frame".into(),
        End::Error(kind) => format!("ended by a read error ({kind:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_are_masked_and_sized() {
        let f = client_frame(OP_BINARY, b"abc");
        assert_eq!(f[0], 0x82);
        assert_eq!(f[1], 0x80 | 3);
        let mask = [f[2], f[3], f[4], f[5]];
        let payload: Vec<u8> = f[6..].iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect();
        assert_eq!(payload, b"abc");
        let big = client_frame(OP_TEXT, &vec![b'x'; 70_000]);
        assert_eq!(big[1], 0x80 | 127);
        assert_eq!(big.len(), 2 + 8 + 4 + 70_000);
        let mid = client_frame(OP_TEXT, &[b'x'; 300]);
        assert_eq!((mid[1], u16::from_be_bytes([mid[2], mid[3]])), (0x80 | 126, 300));
    }

    #[tokio::test]
    async fn parses_server_frames_split_anywhere() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut bytes = vec![0x82, 3, b'a', b'b', b'c', 0x82, 126, 1, 44];
            bytes.extend(std::iter::repeat_n(b'y', 300));
            bytes.extend([0x88, 2, 0x0F, 0xA0]);
            for b in bytes {
                s.write_all(&[b]).await.unwrap();
            }
        });
        let stream = connect(addr, None, Some(4096), Duration::from_secs(5)).await.unwrap();
        let mut ws = RawWs { stream, buf: Vec::new(), pos: 0, next_ref: 1 };
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(ws.read_frame(deadline).await.unwrap(), Some((OP_BINARY, b"abc".to_vec())));
        let (end, read) = ws.drain(deadline, 1 << 20).await;
        assert!(matches!(end, Some(End::Close(Some(4000)))), "{end:?}");
        assert_eq!(read, 300 + 2);
        server.await.unwrap();
    }
}
