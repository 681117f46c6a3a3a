//! A minimal SPDY/3.1 server, enough for kubectl port-forward: the port-forward protocol
//! (`portforward.k8s.io`) with an echo behind every port.
//!
//! SPDY/3.1 as spoken by client-go (moby/spdystream): 8-byte frame headers; control frames
//! (`SYN_STREAM`, `SYN_REPLY`, `RST_STREAM`, `SETTINGS`, `PING`, `GOAWAY`, `WINDOW_UPDATE`) and data
//! frames with a FIN flag. Header blocks are zlib streams, one per direction and connection, with the
//! SPDY/3 preset dictionary. Our replies use stored (uncompressed) deflate blocks, which any inflater
//! reads, so only inflating needs the dictionary. spdystream does no flow control, so window updates
//! are ignored.
//!
//! Port-forward: for each forwarded connection the client opens an `error` stream (and half-closes it at
//! once) and a `data` stream, both with `port` and `requestid` headers. Data is echoed back on the data
//! stream; when the client half-closes it, the server ends both streams.

use std::collections::HashMap;

use flate2::{Decompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 1;

/// The SPDY/3 header compression dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1): these names as
/// length-prefixed strings, then a run of common values.
fn dictionary() -> Vec<u8> {
    const WORDS: &[&str] = &[
        "options",
        "head",
        "post",
        "put",
        "delete",
        "trace",
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "accept-ranges",
        "age",
        "allow",
        "authorization",
        "cache-control",
        "connection",
        "content-base",
        "content-encoding",
        "content-language",
        "content-length",
        "content-location",
        "content-md5",
        "content-range",
        "content-type",
        "date",
        "etag",
        "expect",
        "expires",
        "from",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-range",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "pragma",
        "proxy-authenticate",
        "proxy-authorization",
        "range",
        "referer",
        "retry-after",
        "server",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "vary",
        "via",
        "warning",
        "www-authenticate",
        "method",
        "get",
        "status",
        "200 OK",
        "version",
        "HTTP/1.1",
        "url",
        "public",
        "set-cookie",
        "keep-alive",
        "origin",
    ];
    const TAIL: &str = concat!(
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
        "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
        "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
        "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
        "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
    );
    let mut d = Vec::new();
    for w in WORDS {
        d.extend_from_slice(&(w.len() as u32).to_be_bytes());
        d.extend_from_slice(w.as_bytes());
    }
    d.extend_from_slice(TAIL.as_bytes());
    d
}

/// One side of a SPDY connection's header compression.
struct Headers {
    inflate: Decompress,
    dict: Vec<u8>,
    /// Whether our outgoing zlib stream has its header yet.
    deflate_started: bool,
}

impl Headers {
    fn new() -> Self {
        Self {
            inflate: Decompress::new(true),
            dict: dictionary(),
            deflate_started: false,
        }
    }

    fn decode(&mut self, block: &[u8]) -> HashMap<String, Vec<String>> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let mut input = block;
        loop {
            let before = self.inflate.total_in();
            if out.capacity() - out.len() < 1024 {
                out.reserve(4096);
            }
            let r = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = (self.inflate.total_in() - before) as usize;
            input = &input[used..];
            match r {
                Ok(Status::Ok) | Ok(Status::BufError) if input.is_empty() => break,
                Ok(Status::StreamEnd) => break,
                Ok(_) => continue,
                Err(e) => match e.needs_dictionary() {
                    Some(id) => {
                        let ours = self.inflate.set_dictionary(&self.dict).unwrap();
                        assert_eq!(ours, id, "the SPDY/3 dictionary in the test bed is wrong");
                    }
                    None => panic!("bad SPDY header block: {e}"),
                },
            }
        }
        let mut headers: HashMap<String, Vec<String>> = HashMap::new();
        let mut p = &out[..];
        let mut take = |n: usize| {
            let (a, b) = p.split_at(n);
            p = b;
            a.to_vec()
        };
        let count = u32::from_be_bytes(take(4).try_into().unwrap());
        for _ in 0..count {
            let n = u32::from_be_bytes(take(4).try_into().unwrap()) as usize;
            let name = String::from_utf8(take(n)).unwrap();
            let n = u32::from_be_bytes(take(4).try_into().unwrap()) as usize;
            let value = String::from_utf8(take(n)).unwrap();
            headers
                .entry(name)
                .or_default()
                .extend(value.split('\0').map(str::to_owned));
        }
        headers
    }

    /// A header block: the name/value pairs in stored deflate blocks of our zlib stream.
    fn encode(&mut self, pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = (pairs.len() as u32).to_be_bytes().to_vec();
        for (k, v) in pairs {
            raw.extend_from_slice(&(k.len() as u32).to_be_bytes());
            raw.extend_from_slice(k.as_bytes());
            raw.extend_from_slice(&(v.len() as u32).to_be_bytes());
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::new();
        if !self.deflate_started {
            out.extend_from_slice(&[0x78, 0x01]);
            self.deflate_started = true;
        }
        let len = raw.len() as u16;
        out.push(0); // not final, stored
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(&raw);
        // An empty stored block, as a sync flush ends with: Go's inflater hands out a stored block's
        // bytes only when it reaches the next block, which must therefore be in this frame.
        out.extend_from_slice(&[0, 0, 0, 0xff, 0xff]);
        out
    }
}

enum Frame {
    Control {
        kind: u16,
        flags: u8,
        payload: Vec<u8>,
    },
    Data {
        stream: u32,
        flags: u8,
        data: Vec<u8>,
    },
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Option<Frame> {
    let mut h = [0u8; 8];
    r.read_exact(&mut h).await.ok()?;
    let flags = h[4];
    let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.ok()?;
    if h[0] & 0x80 != 0 {
        Some(Frame::Control {
            kind: u16::from_be_bytes([h[2], h[3]]),
            flags,
            payload,
        })
    } else {
        Some(Frame::Data {
            stream: u32::from_be_bytes([h[0], h[1], h[2], h[3]]) & 0x7fff_ffff,
            flags,
            data: payload,
        })
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80, 3];
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(payload);
    f
}

fn data(stream: u32, flags: u8, bytes: &[u8]) -> Vec<u8> {
    let mut f = stream.to_be_bytes().to_vec();
    f.push(flags);
    f.extend_from_slice(&(bytes.len() as u32).to_be_bytes()[1..]);
    f.extend_from_slice(bytes);
    f
}

/// Serves port-forward over `io` until the client goes away.
pub async fn serve_port_forward<IO: AsyncRead + AsyncWrite + Unpin>(io: IO) {
    let (mut r, mut w) = tokio::io::split(io);
    let mut headers = Headers::new();
    // requestid -> error stream id
    let mut error_streams: HashMap<String, u32> = HashMap::new();
    // data stream id -> requestid
    let mut data_streams: HashMap<u32, String> = HashMap::new();
    while let Some(frame) = read_frame(&mut r).await {
        let mut out = Vec::new();
        match frame {
            Frame::Control {
                kind: SYN_STREAM,
                payload,
                ..
            } => {
                let id = u32::from_be_bytes(payload[0..4].try_into().unwrap()) & 0x7fff_ffff;
                let h = headers.decode(&payload[10..]);
                let get = |k: &str| {
                    h.get(k)
                        .and_then(|v| v.first())
                        .cloned()
                        .unwrap_or_default()
                };
                let request = get("requestid");
                match get("streamtype").as_str() {
                    "error" => {
                        error_streams.insert(request, id);
                    }
                    "data" => {
                        data_streams.insert(id, request);
                    }
                    _ => {}
                }
                let mut reply = id.to_be_bytes().to_vec();
                reply.extend_from_slice(&headers.encode(&[]));
                out.extend_from_slice(&control(SYN_REPLY, 0, &reply));
            }
            Frame::Control {
                kind: PING,
                payload,
                ..
            } => {
                out.extend_from_slice(&control(PING, 0, &payload));
            }
            Frame::Control { kind: GOAWAY, .. } => break,
            Frame::Control { .. } => {}
            Frame::Data {
                stream,
                flags,
                data: bytes,
            } => {
                if let Some(request) = data_streams.get(&stream) {
                    if !bytes.is_empty() {
                        out.extend_from_slice(&data(stream, 0, &bytes));
                    }
                    if flags & FLAG_FIN != 0 {
                        out.extend_from_slice(&data(stream, FLAG_FIN, &[]));
                        if let Some(err) = error_streams.get(request) {
                            out.extend_from_slice(&data(*err, FLAG_FIN, &[]));
                        }
                    }
                }
            }
        }
        if !out.is_empty() && w.write_all(&out).await.is_err() {
            break;
        }
    }
    let _ = w.shutdown().await;
}
