//! RESP2, the Redis protocol, as far as a server needs it: an incremental, bounded parser
//! for requests (arrays of bulk strings, and inline commands for telnet), and the encoder
//! for replies.
//!
//! The parser consumes a request's bytes from the connection's buffer one argument at a
//! time, so a large value arriving in many reads is looked at once, not re-scanned per
//! read, and the arguments are zero-copy slices of the buffer. Every length is checked
//! against its limit before anything is allocated or buffered for it.
//!
//! It does not parse replies (a server never reads one) or RESP3.

use std::borrow::Cow;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The longest bulk string a request may carry: the largest record the log takes, since a
/// larger value could never be replicated.
pub const BULK_LEN_MAX: usize = wal::format::RECORD_PAYLOAD_LEN_MAX;

/// The most arguments one request may have.
pub const ARGS_COUNT_MAX: usize = 1 << 20;

/// The most bytes of bulk strings one request may carry, all its arguments together.
pub const REQUEST_LEN_MAX: usize = BULK_LEN_MAX + (1 << 20);

/// The longest inline command (as Redis's `PROTO_INLINE_MAX_SIZE`).
pub const INLINE_LEN_MAX: usize = 64 << 10;

/// The longest `*<count>` or `$<len>` header line, CRLF included: a sign, 19 digits, CRLF,
/// and room to spare. A longer one is garbage, not a header still arriving.
const HEADER_LEN_MAX: usize = 32;

const _: () = assert!(REQUEST_LEN_MAX >= BULK_LEN_MAX);
const _: () = assert!(INLINE_LEN_MAX <= REQUEST_LEN_MAX);

/// A request that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    /// Said to the client after `-ERR Protocol error: `.
    pub message: Cow<'static, str>,
    /// The bad request's bytes were consumed and the next request starts cleanly after
    /// them (a bad inline line). Otherwise the stream cannot be resynchronised: answer the
    /// error, then close the connection.
    pub recoverable: bool,
}

impl ProtocolError {
    fn fatal(message: impl Into<Cow<'static, str>>) -> ProtocolError {
        ProtocolError {
            message: message.into(),
            recoverable: false,
        }
    }
}

/// The request being assembled: how many arguments it has, and those parsed so far.
#[derive(Debug)]
struct Partial {
    count: usize,
    args: Vec<Bytes>,
    /// Bytes of bulk strings so far, for [`REQUEST_LEN_MAX`].
    len: usize,
}

/// Parses requests out of a connection's read buffer; keeps the partly received one.
#[derive(Debug, Default)]
pub struct RequestParser {
    partial: Option<Partial>,
}

impl RequestParser {
    /// The next complete request in `buf` (its bytes consumed), `Ok(None)` if more bytes
    /// are needed, or the reason the bytes are not RESP.
    ///
    /// After an unrecoverable error the parser's state is unspecified; the caller closes
    /// the connection.
    pub fn parse(&mut self, buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
        loop {
            let Some(partial) = &mut self.partial else {
                match buf.first() {
                    None => return Ok(None),
                    Some(b'*') => match parse_array_header(buf)? {
                        None => return Ok(None),
                        // `*0` and `*-1` are empty requests; Redis skips them.
                        Some(0) => continue,
                        Some(count) => {
                            self.partial = Some(Partial {
                                count,
                                // Grown as arguments arrive, not trusted up front.
                                args: Vec::with_capacity(count.min(64)),
                                len: 0,
                            });
                            continue;
                        }
                    },
                    Some(_) => match parse_inline(buf)? {
                        None => return Ok(None),
                        Some(args) if args.is_empty() => continue,
                        Some(args) => return Ok(Some(args)),
                    },
                }
            };
            while partial.args.len() < partial.count {
                let Some(arg) = parse_bulk(buf, partial.len)? else {
                    return Ok(None);
                };
                partial.len += arg.len();
                partial.args.push(arg);
            }
            let args = self.partial.take().map(|p| p.args).unwrap_or_default();
            return Ok(Some(args));
        }
    }
}

/// The line at the start of `buf` without its CRLF, if it is complete; `what` names it in
/// the error for a header longer than [`HEADER_LEN_MAX`].
fn header_line<'a>(buf: &'a [u8], what: &'static str) -> Result<Option<&'a [u8]>, ProtocolError> {
    let window = &buf[..buf.len().min(HEADER_LEN_MAX)];
    match window.windows(2).position(|pair| pair == b"\r\n") {
        Some(end) => Ok(Some(&buf[..end])),
        None if buf.len() >= HEADER_LEN_MAX => Err(ProtocolError::fatal(what)),
        None => Ok(None),
    }
}

fn parse_number(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `*<count>\r\n`: consumes it and returns the count (0 for an empty or null array).
fn parse_array_header(buf: &mut BytesMut) -> Result<Option<usize>, ProtocolError> {
    const INVALID: &str = "invalid multibulk length";
    let Some(line) = header_line(buf, INVALID)? else {
        return Ok(None);
    };
    let count = parse_number(&line[1..]).ok_or(ProtocolError::fatal(INVALID))?;
    let consumed = line.len() + 2;
    let count = match usize::try_from(count) {
        Ok(count) if count <= ARGS_COUNT_MAX => count,
        Ok(_) => return Err(ProtocolError::fatal(INVALID)),
        // Negative: a null array, which Redis ignores as an empty request.
        Err(_) => 0,
    };
    buf.advance(consumed);
    Ok(Some(count))
}

/// `$<len>\r\n<bytes>\r\n`: consumes it only once it is all there. `request_len` is what
/// the request's earlier arguments hold.
fn parse_bulk(buf: &mut BytesMut, request_len: usize) -> Result<Option<Bytes>, ProtocolError> {
    const INVALID: &str = "invalid bulk length";
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first != b'$' {
        return Err(ProtocolError::fatal(format!(
            "expected '$', got '{}'",
            char::from(first).escape_default()
        )));
    }
    let Some(line) = header_line(buf, INVALID)? else {
        return Ok(None);
    };
    let len = parse_number(&line[1..]).ok_or(ProtocolError::fatal(INVALID))?;
    let len = match usize::try_from(len) {
        Ok(len) if len <= BULK_LEN_MAX => len,
        _ => return Err(ProtocolError::fatal(INVALID)),
    };
    if request_len.saturating_add(len) > REQUEST_LEN_MAX {
        return Err(ProtocolError::fatal("request too large"));
    }
    let header_len = line.len() + 2;
    let total = header_len + len + 2;
    if buf.len() < total {
        // Room for the rest of the value, so the reads land in one allocation.
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    if &buf[total - 2..total] != b"\r\n" {
        return Err(ProtocolError::fatal("bulk string not followed by CRLF"));
    }
    buf.advance(header_len);
    let arg = buf.split_to(len).freeze();
    buf.advance(2);
    Ok(Some(arg))
}

/// An inline command: one line (LF or CRLF), split as Redis splits it. Consumes the line.
fn parse_inline(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let window = &buf[..buf.len().min(INLINE_LEN_MAX)];
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= INLINE_LEN_MAX {
            return Err(ProtocolError::fatal("too big inline request"));
        }
        return Ok(None);
    };
    let line = buf.split_to(end + 1);
    let line = line.strip_suffix(b"\n").unwrap_or(&line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    split_inline(line)
        .map(Some)
        .map_err(|message| ProtocolError {
            message: message.into(),
            recoverable: true,
        })
}

/// Splits an inline command into arguments: runs of non-space bytes, with `"..."` (C-like
/// escapes, `\xHH`) and `'...'` (only `\'`) quoting, as Redis's `sdssplitargs`.
pub fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, &'static str> {
    const UNBALANCED: &str = "unbalanced quotes in request";
    let mut args = Vec::new();
    let mut rest = line;
    loop {
        while let [first, tail @ ..] = rest {
            if !first.is_ascii_whitespace() {
                break;
            }
            rest = tail;
        }
        if rest.is_empty() {
            return Ok(args);
        }
        let mut arg = Vec::new();
        loop {
            match rest {
                [] => break,
                [c, ..] if c.is_ascii_whitespace() => break,
                [b'"', tail @ ..] => {
                    rest = split_inline_double(tail, &mut arg).ok_or(UNBALANCED)?;
                    if rest.first().is_some_and(|c| !c.is_ascii_whitespace()) {
                        return Err(UNBALANCED);
                    }
                }
                [b'\'', tail @ ..] => {
                    rest = split_inline_single(tail, &mut arg).ok_or(UNBALANCED)?;
                    if rest.first().is_some_and(|c| !c.is_ascii_whitespace()) {
                        return Err(UNBALANCED);
                    }
                }
                [c, tail @ ..] => {
                    arg.push(*c);
                    rest = tail;
                }
            }
        }
        args.push(Bytes::from(arg));
    }
}

/// The inside of `"..."` after the opening quote; returns what follows the closing quote.
fn split_inline_double<'a>(mut rest: &'a [u8], arg: &mut Vec<u8>) -> Option<&'a [u8]> {
    loop {
        match rest {
            [] => return None,
            [b'"', tail @ ..] => return Some(tail),
            [b'\\', b'x', high, low, tail @ ..]
                if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() =>
            {
                arg.push((hex_value(*high) << 4) | hex_value(*low));
                rest = tail;
            }
            [b'\\', escaped, tail @ ..] => {
                arg.push(match escaped {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'a' => 0x07,
                    other => *other,
                });
                rest = tail;
            }
            [c, tail @ ..] => {
                arg.push(*c);
                rest = tail;
            }
        }
    }
}

/// The inside of `'...'` after the opening quote; returns what follows the closing quote.
fn split_inline_single<'a>(mut rest: &'a [u8], arg: &mut Vec<u8>) -> Option<&'a [u8]> {
    loop {
        match rest {
            [] => return None,
            [b'\'', tail @ ..] => return Some(tail),
            [b'\\', b'\'', tail @ ..] => {
                arg.push(b'\'');
                rest = tail;
            }
            [c, tail @ ..] => {
                arg.push(*c);
                rest = tail;
            }
        }
    }
}

fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        b'A'..=b'F' => digit - b'A' + 10,
        _ => 0,
    }
}

/// A reply to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`, `+PONG`.
    Status(Cow<'static, str>),
    /// `-CODE message`: the text starts with the error code (`ERR`, `NOTPRIMARY`, ...).
    Error(Cow<'static, str>),
    Integer(i64),
    Bulk(Bytes),
    /// The null bulk string, `$-1`.
    Nil,
    Array(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status(Cow::Borrowed("OK"))
    }

    pub fn error(message: impl Into<Cow<'static, str>>) -> Reply {
        Reply::Error(message.into())
    }

    /// Appends the reply's RESP2 encoding to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Reply::Status(text) => encode_line(out, b'+', text),
            Reply::Error(text) => encode_line(out, b'-', text),
            Reply::Integer(value) => {
                out.put_u8(b':');
                out.put_slice(value.to_string().as_bytes());
                out.put_slice(b"\r\n");
            }
            Reply::Bulk(bytes) => {
                out.reserve(bytes.len() + 16);
                out.put_u8(b'$');
                out.put_slice(bytes.len().to_string().as_bytes());
                out.put_slice(b"\r\n");
                out.put_slice(bytes);
                out.put_slice(b"\r\n");
            }
            Reply::Nil => out.put_slice(b"$-1\r\n"),
            Reply::Array(items) => {
                out.put_u8(b'*');
                out.put_slice(items.len().to_string().as_bytes());
                out.put_slice(b"\r\n");
                for item in items {
                    item.encode(out);
                }
            }
        }
    }
}

/// A status or error line. CR and LF would end the line early and desynchronise the
/// client, so they become spaces (error texts may quote what a client sent).
fn encode_line(out: &mut BytesMut, kind: u8, text: &str) {
    out.put_u8(kind);
    out.extend(
        text.bytes()
            .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(parser: &mut RequestParser, buf: &mut BytesMut) -> Vec<Vec<Bytes>> {
        let mut requests = Vec::new();
        while let Some(request) = parser.parse(buf).unwrap() {
            requests.push(request);
        }
        requests
    }

    fn args(words: &[&str]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::from(w.to_string())).collect()
    }

    fn encode_request(request: &[Bytes]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", request.len()).into_bytes();
        for arg in request {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Several requests in one read (a pipeline) come out one by one, in order.
    #[test]
    fn pipelined_requests_parse_in_order() {
        let mut buf = BytesMut::from(
            &b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nPING\r\n"[..],
        );
        let mut parser = RequestParser::default();
        let requests = parse_all(&mut parser, &mut buf);
        assert_eq!(
            requests,
            vec![args(&["PING"]), args(&["SET", "k", ""]), args(&["PING"])]
        );
        assert!(buf.is_empty());
    }

    /// A request cut anywhere is completed by the next read.
    #[test]
    fn request_split_at_every_byte_parses_the_same() {
        let bytes = encode_request(&args(&["SET", "key", "a value\r\nwith CRLF"]));
        for cut in 0..bytes.len() {
            let mut parser = RequestParser::default();
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(parser.parse(&mut buf), Ok(None), "cut at {cut}");
            buf.extend_from_slice(&bytes[cut..]);
            assert_eq!(
                parser.parse(&mut buf),
                Ok(Some(args(&["SET", "key", "a value\r\nwith CRLF"])))
            );
        }
    }

    /// Inline commands split on spaces and honour both kinds of quotes.
    #[test]
    fn inline_commands_split_like_redis() {
        let mut buf = BytesMut::from(&b"set k \"a b\\x41\\n\" 'it\\'s'\r\n\r\n  \nget k\n"[..]);
        let mut parser = RequestParser::default();
        let requests = parse_all(&mut parser, &mut buf);
        assert_eq!(
            requests,
            vec![args(&["set", "k", "a bA\n", "it's"]), args(&["get", "k"])]
        );
    }

    /// An unbalanced quote spoils only its own line.
    #[test]
    fn unbalanced_inline_quote_is_recoverable() {
        let mut buf = BytesMut::from(&b"get \"k\nPING\n"[..]);
        let mut parser = RequestParser::default();
        let error = parser.parse(&mut buf).unwrap_err();
        assert!(error.recoverable);
        assert_eq!(parser.parse(&mut buf), Ok(Some(args(&["PING"]))));
    }

    /// Lengths above the limits are refused before anything is buffered for them.
    #[test]
    fn oversized_lengths_are_refused_up_front() {
        for bytes in [
            format!("*{}\r\n", ARGS_COUNT_MAX + 1),
            format!("*1\r\n${}\r\n", BULK_LEN_MAX + 1),
            "*1\r\n$-5\r\n".to_owned(),
            "*x\r\n".to_owned(),
            "*1\r\n:5\r\n".to_owned(),
            format!("*1\r\n{}", "$".repeat(HEADER_LEN_MAX)),
        ] {
            let mut parser = RequestParser::default();
            let mut buf = BytesMut::from(bytes.as_bytes());
            let error = parser.parse(&mut buf).unwrap_err();
            assert!(!error.recoverable, "{bytes:?}");
            assert!(buf.capacity() < 1 << 20, "{bytes:?}");
        }
    }

    /// A bulk string whose CRLF is missing is garbage.
    #[test]
    fn bulk_without_crlf_is_refused() {
        let mut buf = BytesMut::from(&b"*1\r\n$2\r\nabcd"[..]);
        let error = RequestParser::default().parse(&mut buf).unwrap_err();
        assert!(!error.recoverable);
    }

    /// Replies encode as RESP2; status and error lines cannot be broken by CR or LF.
    #[test]
    fn replies_encode_as_resp2() {
        let mut out = BytesMut::new();
        Reply::Array(vec![
            Reply::ok(),
            Reply::error("ERR bad\r\nthing"),
            Reply::Integer(-3),
            Reply::Bulk(Bytes::from_static(b"v")),
            Reply::Nil,
            Reply::Array(vec![]),
        ])
        .encode(&mut out);
        assert_eq!(
            &out[..],
            b"*6\r\n+OK\r\n-ERR bad  thing\r\n:-3\r\n$1\r\nv\r\n$-1\r\n*0\r\n"
        );
    }

    proptest! {
        /// Requests encoded as arrays and fed in arbitrary pieces come back as they were.
        #[test]
        fn encoded_requests_round_trip_in_any_chunking(
            requests in prop::collection::vec(
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6), 1..6),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let requests: Vec<Vec<Bytes>> = requests
                .into_iter()
                .map(|r| r.into_iter().map(Bytes::from).collect())
                .collect();
            let bytes: Vec<u8> = requests.iter().flat_map(|r| encode_request(r)).collect();
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut parser = RequestParser::default();
            let (mut buf, mut from, mut parsed) = (BytesMut::new(), 0, Vec::new());
            for cut in cuts {
                buf.extend_from_slice(&bytes[from..cut]);
                from = cut;
                parsed.extend(parse_all(&mut parser, &mut buf));
            }
            prop_assert_eq!(parsed, requests);
        }

        /// Arbitrary bytes never panic; fed whole or in two pieces, they parse the same up
        /// to the first error.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300),
                                       cut in any::<prop::sample::Index>()) {
            let whole = parse_until_error(&[&bytes]);
            let cut = cut.index(bytes.len() + 1);
            let pieces = parse_until_error(&[&bytes[..cut], &bytes[cut..]]);
            prop_assert_eq!(whole.0, pieces.0);
            prop_assert_eq!(whole.1.is_some(), pieces.1.is_some());
        }
    }

    /// Everything parsed from `pieces` fed in turn, and the first fatal error.
    fn parse_until_error(pieces: &[&[u8]]) -> (Vec<Result<Vec<Bytes>, String>>, Option<String>) {
        let mut parser = RequestParser::default();
        let mut buf = BytesMut::new();
        let mut parsed = Vec::new();
        for piece in pieces {
            buf.extend_from_slice(piece);
            loop {
                match parser.parse(&mut buf) {
                    Ok(Some(request)) => parsed.push(Ok(request)),
                    Ok(None) => break,
                    Err(error) if error.recoverable => parsed.push(Err(error.to_string())),
                    Err(error) => return (parsed, Some(error.to_string())),
                }
            }
        }
        (parsed, None)
    }
}
