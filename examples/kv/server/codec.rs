//! The replicated command: the writes of one pipeline, in a compact binary record.
//!
//! Only writes go into the log, already resolved by the proposer into what `apply` needs
//! to be deterministic: a `SET ... EX 10` carries its absolute expiry time, and every
//! record carries the proposer's clock (`now_ms`), which `apply` uses instead of reading
//! one. A record with no operations changes nothing but the state's clock (earlier versions
//! wrote one per read, as a barrier; logs that hold them still apply).
//!
//! ```text
//! record   := version:u8 (= 1) | now_ms:u64 | op_count:u32 | op * op_count
//! op       := 1 (SET)      flags:u8 | [expire_at_ms:u64 if flags & EXPIRE_AT] | key:blob | value:blob
//!           | 2 (DEL)      key_count:u32 | key:blob * key_count
//!           | 3 (INCRBY)   key:blob | delta:i64
//!           | 4 (MSET)     pair_count:u32 | (key:blob | value:blob) * pair_count
//!           | 5 (FLUSHALL)
//! blob     := len:u32 | bytes * len
//! SET flags: 0x01 NX, 0x02 XX, 0x04 GET, 0x08 KEEPTTL, 0x10 EXPIRE_AT; no other bit, and
//!            at most one of NX/XX and of KEEPTTL/EXPIRE_AT.
//! ```
//! All integers are little-endian. [`decode`] refuses anything else (an unknown version or
//! operation, bad flags, a short or over-long record) and never allocates more than the
//! record's length justifies.

use bytes::{BufMut, Bytes};

/// The format version this code writes and reads.
pub const VERSION: u8 = 1;

/// `version`, `now_ms` and `op_count`.
pub const HEADER_LEN: usize = 1 + 8 + 4;

/// The largest record the log takes.
pub const RECORD_LEN_MAX: usize = wal::format::RECORD_PAYLOAD_LEN_MAX;

const OP_SET: u8 = 1;
const OP_DEL: u8 = 2;
const OP_INCRBY: u8 = 3;
const OP_MSET: u8 = 4;
const OP_FLUSHALL: u8 = 5;

const FLAG_NX: u8 = 0x01;
const FLAG_XX: u8 = 0x02;
const FLAG_GET: u8 = 0x04;
const FLAG_KEEPTTL: u8 = 0x08;
const FLAG_EXPIRE_AT: u8 = 0x10;
const FLAGS_ALL: u8 = FLAG_NX | FLAG_XX | FLAG_GET | FLAG_KEEPTTL | FLAG_EXPIRE_AT;

/// The writes of one record, and the proposer's clock when it made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// Milliseconds since the UNIX epoch on the proposer's clock.
    pub now_ms: u64,
    pub ops: Vec<Op>,
}

/// When a SET applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Always,
    /// NX: only if the key does not exist.
    IfAbsent,
    /// XX: only if the key exists.
    IfPresent,
}

/// What a SET does to the key's time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No expiry: the key lives until deleted (any earlier time to live is dropped).
    Never,
    /// KEEPTTL: the key keeps the expiry it had.
    Keep,
    /// The key expires at this time, milliseconds since the UNIX epoch.
    At(u64),
}

/// One write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Set {
        key: Bytes,
        value: Bytes,
        condition: Condition,
        expiry: Expiry,
        /// GET: reply with the old value instead of `OK`.
        get: bool,
    },
    Del {
        keys: Vec<Bytes>,
    },
    IncrBy {
        key: Bytes,
        delta: i64,
    },
    MSet {
        pairs: Vec<(Bytes, Bytes)>,
    },
    FlushAll,
}

impl Op {
    /// The bytes [`Batch::encode`] writes for this operation.
    pub fn encoded_len(&self) -> usize {
        const BLOB: usize = 4;
        1 + match self {
            Op::Set {
                key, value, expiry, ..
            } => {
                let expiry_len = if matches!(expiry, Expiry::At(_)) {
                    8
                } else {
                    0
                };
                1 + expiry_len + BLOB + key.len() + BLOB + value.len()
            }
            Op::Del { keys } => 4 + keys.iter().map(|k| BLOB + k.len()).sum::<usize>(),
            Op::IncrBy { key, .. } => BLOB + key.len() + 8,
            Op::MSet { pairs } => {
                4 + pairs
                    .iter()
                    .map(|(k, v)| 2 * BLOB + k.len() + v.len())
                    .sum::<usize>()
            }
            Op::FlushAll => 0,
        }
    }
}

impl Batch {
    /// A record with no operations: it changes nothing but the state's clock.
    pub fn barrier(now_ms: u64) -> Batch {
        Batch {
            now_ms,
            ops: Vec::new(),
        }
    }

    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.ops.iter().map(Op::encoded_len).sum::<usize>()
    }

    /// The record's bytes. The caller keeps the record within [`RECORD_LEN_MAX`] (so every
    /// length fits its `u32`).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.put_u8(VERSION);
        out.put_u64_le(self.now_ms);
        put_count(&mut out, self.ops.len());
        for op in &self.ops {
            match op {
                Op::Set {
                    key,
                    value,
                    condition,
                    expiry,
                    get,
                } => {
                    out.put_u8(OP_SET);
                    let mut flags = match condition {
                        Condition::Always => 0,
                        Condition::IfAbsent => FLAG_NX,
                        Condition::IfPresent => FLAG_XX,
                    };
                    if *get {
                        flags |= FLAG_GET;
                    }
                    flags |= match expiry {
                        Expiry::Never => 0,
                        Expiry::Keep => FLAG_KEEPTTL,
                        Expiry::At(_) => FLAG_EXPIRE_AT,
                    };
                    out.put_u8(flags);
                    if let Expiry::At(at_ms) = expiry {
                        out.put_u64_le(*at_ms);
                    }
                    put_blob(&mut out, key);
                    put_blob(&mut out, value);
                }
                Op::Del { keys } => {
                    out.put_u8(OP_DEL);
                    put_count(&mut out, keys.len());
                    for key in keys {
                        put_blob(&mut out, key);
                    }
                }
                Op::IncrBy { key, delta } => {
                    out.put_u8(OP_INCRBY);
                    put_blob(&mut out, key);
                    out.put_i64_le(*delta);
                }
                Op::MSet { pairs } => {
                    out.put_u8(OP_MSET);
                    put_count(&mut out, pairs.len());
                    for (key, value) in pairs {
                        put_blob(&mut out, key);
                        put_blob(&mut out, value);
                    }
                }
                Op::FlushAll => out.put_u8(OP_FLUSHALL),
            }
        }
        assert_eq!(
            out.len(),
            self.encoded_len(),
            "encoded_len disagrees with encode"
        );
        out
    }
}

fn put_count(out: &mut Vec<u8>, count: usize) {
    let count = u32::try_from(count).expect("a count within a record fits u32");
    out.put_u32_le(count);
}

fn put_blob(out: &mut Vec<u8>, bytes: &[u8]) {
    put_count(out, bytes.len());
    out.put_slice(bytes);
}

/// Why a record is not a command of this format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record ends early")]
    Truncated,
    #[error("format version {found} is not supported (reads {VERSION})")]
    UnsupportedVersion { found: u8 },
    #[error("unknown operation {0}")]
    UnknownOp(u8),
    #[error("bad SET flags {0:#04x}")]
    BadFlags(u8),
    #[error("{0} bytes after the last operation")]
    TrailingBytes(usize),
}

/// Parses a record written by [`Batch::encode`].
pub fn decode(bytes: &[u8]) -> Result<Batch, DecodeError> {
    let mut reader = Reader(bytes);
    let version = reader.u8()?;
    if version != VERSION {
        return Err(DecodeError::UnsupportedVersion { found: version });
    }
    let now_ms = reader.u64()?;
    let op_count = reader.count(1)?;
    let mut ops = Vec::with_capacity(op_count);
    for _ in 0..op_count {
        ops.push(decode_op(&mut reader)?);
    }
    if !reader.0.is_empty() {
        return Err(DecodeError::TrailingBytes(reader.0.len()));
    }
    Ok(Batch { now_ms, ops })
}

fn decode_op(reader: &mut Reader<'_>) -> Result<Op, DecodeError> {
    match reader.u8()? {
        OP_SET => {
            let flags = reader.u8()?;
            let both = |a: u8, b: u8| flags & a != 0 && flags & b != 0;
            if flags & !FLAGS_ALL != 0
                || both(FLAG_NX, FLAG_XX)
                || both(FLAG_KEEPTTL, FLAG_EXPIRE_AT)
            {
                return Err(DecodeError::BadFlags(flags));
            }
            let condition = if flags & FLAG_NX != 0 {
                Condition::IfAbsent
            } else if flags & FLAG_XX != 0 {
                Condition::IfPresent
            } else {
                Condition::Always
            };
            let expiry = if flags & FLAG_EXPIRE_AT != 0 {
                Expiry::At(reader.u64()?)
            } else if flags & FLAG_KEEPTTL != 0 {
                Expiry::Keep
            } else {
                Expiry::Never
            };
            Ok(Op::Set {
                key: reader.blob()?,
                value: reader.blob()?,
                condition,
                expiry,
                get: flags & FLAG_GET != 0,
            })
        }
        OP_DEL => {
            let count = reader.count(4)?;
            let keys = (0..count)
                .map(|_| reader.blob())
                .collect::<Result<_, _>>()?;
            Ok(Op::Del { keys })
        }
        OP_INCRBY => Ok(Op::IncrBy {
            key: reader.blob()?,
            delta: reader.i64()?,
        }),
        OP_MSET => {
            let count = reader.count(8)?;
            let pairs = (0..count)
                .map(|_| Ok((reader.blob()?, reader.blob()?)))
                .collect::<Result<_, _>>()?;
            Ok(Op::MSet { pairs })
        }
        OP_FLUSHALL => Ok(Op::FlushAll),
        other => Err(DecodeError::UnknownOp(other)),
    }
}

/// The unread rest of a record.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let (head, rest) = self.0.split_first_chunk().ok_or(DecodeError::Truncated)?;
        self.0 = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.take().map(u64::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.take().map(i64::from_le_bytes)
    }

    /// A count of items each at least `item_len_min` bytes long: refused when the rest of
    /// the record cannot hold that many, so a forged count allocates nothing.
    fn count(&mut self, item_len_min: usize) -> Result<usize, DecodeError> {
        let count = self.take().map(u32::from_le_bytes)? as usize;
        if count.saturating_mul(item_len_min) > self.0.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(count)
    }

    fn blob(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.take().map(u32::from_le_bytes)? as usize;
        if len > self.0.len() {
            return Err(DecodeError::Truncated);
        }
        let (bytes, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(Bytes::copy_from_slice(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn blob() -> impl Strategy<Value = Bytes> {
        prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from)
    }

    fn op() -> impl Strategy<Value = Op> {
        let condition = prop_oneof![
            Just(Condition::Always),
            Just(Condition::IfAbsent),
            Just(Condition::IfPresent)
        ];
        let expiry = prop_oneof![
            Just(Expiry::Never),
            Just(Expiry::Keep),
            any::<u64>().prop_map(Expiry::At)
        ];
        prop_oneof![
            (blob(), blob(), condition, expiry, any::<bool>()).prop_map(
                |(key, value, condition, expiry, get)| Op::Set {
                    key,
                    value,
                    condition,
                    expiry,
                    get
                }
            ),
            prop::collection::vec(blob(), 0..4).prop_map(|keys| Op::Del { keys }),
            (blob(), any::<i64>()).prop_map(|(key, delta)| Op::IncrBy { key, delta }),
            prop::collection::vec((blob(), blob()), 0..4).prop_map(|pairs| Op::MSet { pairs }),
            Just(Op::FlushAll),
        ]
    }

    /// The barrier is the shortest record: a header with no operations.
    #[test]
    fn barrier_is_a_bare_header() {
        let bytes = Batch::barrier(7).encode();
        assert_eq!(bytes.len(), HEADER_LEN);
        assert_eq!(decode(&bytes), Ok(Batch::barrier(7)));
    }

    /// Bad versions, operations and flags are refused, not guessed at.
    #[test]
    fn unknown_versions_ops_and_flags_are_refused() {
        let mut bytes = Batch::barrier(0).encode();
        bytes[0] = 2;
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::UnsupportedVersion { found: 2 })
        );
        let mut bytes = Batch::barrier(0).encode();
        bytes[9] = 1;
        bytes.push(9);
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownOp(9)));
        let mut bytes = Batch::barrier(0).encode();
        bytes[9] = 1;
        bytes.extend_from_slice(&[OP_SET, FLAG_NX | FLAG_XX]);
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::BadFlags(FLAG_NX | FLAG_XX))
        );
    }

    /// A forged count larger than the record could hold is refused before allocating.
    #[test]
    fn forged_count_is_refused() {
        let mut bytes = Batch::barrier(0).encode();
        bytes[9..13].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::Truncated));
    }

    proptest! {
        /// Every batch decodes to itself, and `encoded_len` is exact.
        #[test]
        fn batches_round_trip(now_ms in any::<u64>(), ops in prop::collection::vec(op(), 0..6)) {
            let batch = Batch { now_ms, ops };
            let bytes = batch.encode();
            prop_assert_eq!(bytes.len(), batch.encoded_len());
            prop_assert_eq!(decode(&bytes), Ok(batch));
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(&bytes);
        }

        /// Any strict prefix of a record is refused, never read as a shorter record.
        #[test]
        fn truncated_records_are_refused(ops in prop::collection::vec(op(), 1..4),
                                         cut in any::<prop::sample::Index>()) {
            let bytes = Batch { now_ms: 1, ops }.encode();
            let cut = cut.index(bytes.len());
            prop_assert!(decode(&bytes[..cut]).is_err());
        }
    }
}
