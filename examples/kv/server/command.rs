//! From a request's arguments to what has to happen for it: an answer that needs no state,
//! a read of the store, or a write to replicate. Argument errors are answered here, on the
//! proposer, and never reach the log.
//!
//! Supported: PING, ECHO, QUIT, SELECT 0, INFO, CLIENT SETNAME|SETINFO, CONFIG GET and
//! COMMAND (answered with little or nothing, for the handshakes of redis-cli,
//! redis-benchmark and client libraries); reads GET, MGET, EXISTS, DBSIZE, TTL, PTTL; writes SET (NX|XX, GET,
//! EX|PX|EXAT|PXAT|KEEPTTL), DEL, INCR, INCRBY, DECR, DECRBY, MSET, FLUSHALL and FLUSHDB.
//! Anything else is answered with an error, and the connection goes on.

use bytes::Bytes;

use super::codec::{Condition, Expiry, Op};
use super::resp::Reply;
use super::store::{parse_integer, Store};

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Answered at once, without the state.
    Now(Reply),
    /// INFO, with the sections asked for (lower case; empty for the default set).
    Info(Vec<String>),
    Read(Read),
    Write(Op),
    /// QUIT: answer `OK`, then close.
    Quit,
}

/// A read of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    Get(Bytes),
    MGet(Vec<Bytes>),
    Exists(Vec<Bytes>),
    DbSize,
    /// TTL (seconds) or PTTL (`in_ms`).
    Ttl {
        key: Bytes,
        in_ms: bool,
    },
}

const NOT_AN_INTEGER: &str = "ERR value is not an integer or out of range";
const SYNTAX: &str = "ERR syntax error";

/// The plan for `args` (a request, the command name first), with `now_ms` the clock that
/// relative expiry times count from.
pub fn plan(args: Vec<Bytes>, now_ms: u64) -> Plan {
    let Some((name, rest)) = args.split_first() else {
        return Plan::Now(Reply::error("ERR empty request"));
    };
    let upper = name.to_ascii_uppercase();
    let arity = |min: usize, max: Option<usize>| {
        rest.len() >= min && max.is_none_or(|max| rest.len() <= max)
    };
    let wrong_arity = || {
        Plan::Now(Reply::error(format!(
            "ERR wrong number of arguments for '{}' command",
            printable(name).to_lowercase()
        )))
    };
    let key = |i: usize| rest[i].clone();
    let keys = || rest.to_vec();
    match upper.as_slice() {
        b"PING" if arity(0, Some(1)) => Plan::Now(match rest.first() {
            None => Reply::Status("PONG".into()),
            Some(message) => Reply::Bulk(message.clone()),
        }),
        b"ECHO" if arity(1, Some(1)) => Plan::Now(Reply::Bulk(key(0))),
        b"QUIT" => Plan::Quit,
        b"SELECT" if arity(1, Some(1)) => Plan::Now(match parse_integer(&rest[0]) {
            Some(0) => Reply::ok(),
            Some(_) => Reply::error("ERR DB index is out of range"),
            None => Reply::error(NOT_AN_INTEGER),
        }),
        b"INFO" => Plan::Info(
            rest.iter()
                .map(|section| printable(section).to_lowercase())
                .collect(),
        ),
        b"CLIENT" if arity(1, None) => {
            let sub = rest[0].to_ascii_uppercase();
            match sub.as_slice() {
                b"SETNAME" | b"SETINFO" => Plan::Now(Reply::ok()),
                _ => Plan::Now(Reply::error(format!(
                    "ERR unknown subcommand '{}'",
                    printable(&rest[0])
                ))),
            }
        }
        b"CONFIG" if arity(1, None) => Plan::Now(plan_config(rest)),
        b"COMMAND" => Plan::Now(Reply::Array(Vec::new())),
        b"GET" if arity(1, Some(1)) => Plan::Read(Read::Get(key(0))),
        b"MGET" if arity(1, None) => Plan::Read(Read::MGet(keys())),
        b"EXISTS" if arity(1, None) => Plan::Read(Read::Exists(keys())),
        b"DBSIZE" if arity(0, Some(0)) => Plan::Read(Read::DbSize),
        b"TTL" | b"PTTL" if arity(1, Some(1)) => Plan::Read(Read::Ttl {
            key: key(0),
            in_ms: upper == b"PTTL",
        }),
        b"SET" if arity(2, None) => plan_set(key(0), key(1), &rest[2..], now_ms),
        b"DEL" if arity(1, None) => Plan::Write(Op::Del { keys: keys() }),
        b"INCR" if arity(1, Some(1)) => Plan::Write(Op::IncrBy {
            key: key(0),
            delta: 1,
        }),
        b"DECR" if arity(1, Some(1)) => Plan::Write(Op::IncrBy {
            key: key(0),
            delta: -1,
        }),
        b"INCRBY" | b"DECRBY" if arity(2, Some(2)) => {
            let delta = match parse_integer(&rest[1]) {
                Some(delta) if upper == b"INCRBY" => delta,
                Some(delta) => match delta.checked_neg() {
                    Some(delta) => delta,
                    None => return Plan::Now(Reply::error("ERR decrement would overflow")),
                },
                None => return Plan::Now(Reply::error(NOT_AN_INTEGER)),
            };
            Plan::Write(Op::IncrBy { key: key(0), delta })
        }
        b"MSET" if arity(2, None) && rest.len() % 2 == 0 => Plan::Write(Op::MSet {
            pairs: rest
                .chunks_exact(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect(),
        }),
        b"FLUSHALL" | b"FLUSHDB" => match rest {
            [] => Plan::Write(Op::FlushAll),
            [mode] if mode.eq_ignore_ascii_case(b"SYNC") || mode.eq_ignore_ascii_case(b"ASYNC") => {
                Plan::Write(Op::FlushAll)
            }
            _ => Plan::Now(Reply::error(SYNTAX)),
        },
        b"PING" | b"ECHO" | b"SELECT" | b"CLIENT" | b"GET" | b"MGET" | b"EXISTS" | b"DBSIZE"
        | b"TTL" | b"PTTL" | b"SET" | b"DEL" | b"INCR" | b"DECR" | b"INCRBY" | b"DECRBY"
        | b"MSET" => wrong_arity(),
        _ => Plan::Now(Reply::error(unknown_command(name, rest))),
    }
}

/// CONFIG GET: the two parameters `redis-benchmark` asks for, answered as a server that
/// keeps nothing on disk by itself would (the sidecar does that); nothing else is set.
fn plan_config(args: &[Bytes]) -> Reply {
    if !args[0].eq_ignore_ascii_case(b"GET") {
        return Reply::error(format!(
            "ERR unknown subcommand '{}'; only CONFIG GET is supported",
            printable(&args[0])
        ));
    }
    let mut pairs = Vec::new();
    for parameter in &args[1..] {
        let value: &'static [u8] = match parameter.to_ascii_lowercase().as_slice() {
            b"save" => b"",
            b"appendonly" => b"no",
            _ => continue,
        };
        pairs.push(Reply::Bulk(parameter.clone()));
        pairs.push(Reply::Bulk(Bytes::from_static(value)));
    }
    Reply::Array(pairs)
}

/// SET key value [NX|XX] [GET] [EX s|PX ms|EXAT ts|PXAT ts-ms|KEEPTTL], with Redis's
/// errors. Relative times count from `now_ms`.
fn plan_set(key: Bytes, value: Bytes, options: &[Bytes], now_ms: u64) -> Plan {
    const INVALID_EXPIRE: &str = "ERR invalid expire time in 'set' command";
    let mut condition = Condition::Always;
    let mut get = false;
    let mut expiry = None;
    let mut options = options.iter();
    while let Some(option) = options.next() {
        let option = option.to_ascii_uppercase();
        match option.as_slice() {
            b"NX" if condition != Condition::IfPresent => condition = Condition::IfAbsent,
            b"XX" if condition != Condition::IfAbsent => condition = Condition::IfPresent,
            b"GET" => get = true,
            b"KEEPTTL" if expiry.is_none() => expiry = Some(Expiry::Keep),
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if expiry.is_none() => {
                let Some(amount) = options.next() else {
                    return Plan::Now(Reply::error(SYNTAX));
                };
                let Some(amount) = parse_integer(amount) else {
                    return Plan::Now(Reply::error(NOT_AN_INTEGER));
                };
                let (to_ms, relative) = match option.as_slice() {
                    b"EX" => (1000, true),
                    b"PX" => (1, true),
                    b"EXAT" => (1000, false),
                    _ => (1, false),
                };
                let at_ms = u64::try_from(amount)
                    .ok()
                    .filter(|&amount| amount > 0)
                    .and_then(|amount| amount.checked_mul(to_ms))
                    .and_then(|ms| {
                        if relative {
                            ms.checked_add(now_ms)
                        } else {
                            Some(ms)
                        }
                    })
                    .filter(|&at_ms| i64::try_from(at_ms).is_ok());
                let Some(at_ms) = at_ms else {
                    return Plan::Now(Reply::error(INVALID_EXPIRE));
                };
                expiry = Some(Expiry::At(at_ms));
            }
            _ => return Plan::Now(Reply::error(SYNTAX)),
        }
    }
    Plan::Write(Op::Set {
        key,
        value,
        condition,
        expiry: expiry.unwrap_or(Expiry::Never),
        get,
    })
}

impl Read {
    /// Whether this read's answer at `through_ms` differs from its answer at `after_ms`
    /// because a key it reads expires in between (for DBSIZE, any key).
    pub fn expiry_passed_between(&self, store: &Store, after_ms: u64, through_ms: u64) -> bool {
        let passed = |key: &Bytes| store.expires_between(key, after_ms, through_ms);
        match self {
            Read::Get(key) | Read::Ttl { key, .. } => passed(key),
            Read::MGet(keys) | Read::Exists(keys) => keys.iter().any(passed),
            Read::DbSize => store.any_expires_between(after_ms, through_ms),
        }
    }

    /// The answer from `store` at `now_ms`.
    pub fn answer(&self, store: &Store, now_ms: u64) -> Reply {
        let value = |key: &Bytes| match store.get(key, now_ms) {
            Some(value) => Reply::Bulk(value.clone()),
            None => Reply::Nil,
        };
        match self {
            Read::Get(key) => value(key),
            Read::MGet(keys) => Reply::Array(keys.iter().map(value).collect()),
            Read::Exists(keys) => Reply::Integer(
                keys.iter()
                    .filter(|key| store.live(key, now_ms).is_some())
                    .count() as i64,
            ),
            Read::DbSize => Reply::Integer(store.live_count(now_ms) as i64),
            Read::Ttl { key, in_ms } => Reply::Integer(match store.live(key, now_ms) {
                None => -2,
                Some(entry) => match entry.expire_at_ms {
                    None => -1,
                    Some(at_ms) => {
                        let left_ms = at_ms.saturating_sub(now_ms);
                        let left = if *in_ms {
                            left_ms
                        } else {
                            (left_ms + 500) / 1000
                        };
                        i64::try_from(left).unwrap_or(i64::MAX)
                    }
                },
            }),
        }
    }
}

/// Bytes from a client as text for an error message: lossy UTF-8, at most 128 bytes.
fn printable(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(128)]).into_owned()
}

fn unknown_command(name: &[u8], args: &[Bytes]) -> String {
    let mut message = format!(
        "ERR unknown command '{}', with args beginning with: ",
        printable(name)
    );
    for arg in args.iter().take(8) {
        message.push_str(&format!("'{}' ", printable(arg)));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(words: &[&str]) -> Vec<Bytes> {
        words.iter().map(|w| Bytes::from(w.to_string())).collect()
    }

    fn plan_of(words: &[&str]) -> Plan {
        plan(request(words), 1_000)
    }

    fn error_of(words: &[&str]) -> String {
        match plan_of(words) {
            Plan::Now(Reply::Error(message)) => message.into_owned(),
            other => panic!("{words:?} planned {other:?}, not an error"),
        }
    }

    /// Relative expiry times become absolute ones on the proposer's clock.
    #[test]
    fn set_expiry_becomes_absolute() {
        let expiry_of = |words: &[&str]| match plan_of(words) {
            Plan::Write(Op::Set { expiry, .. }) => expiry,
            other => panic!("{other:?}"),
        };
        assert_eq!(expiry_of(&["set", "k", "v", "ex", "2"]), Expiry::At(3_000));
        assert_eq!(expiry_of(&["SET", "k", "v", "PX", "5"]), Expiry::At(1_005));
        assert_eq!(
            expiry_of(&["set", "k", "v", "exat", "7"]),
            Expiry::At(7_000)
        );
        assert_eq!(expiry_of(&["set", "k", "v", "pxat", "7"]), Expiry::At(7));
        assert_eq!(expiry_of(&["set", "k", "v", "keepttl"]), Expiry::Keep);
        assert_eq!(expiry_of(&["set", "k", "v"]), Expiry::Never);
    }

    /// SET's option errors are Redis's.
    #[test]
    fn set_option_errors_match_redis() {
        for words in [
            &["set", "k", "v", "nx", "xx"][..],
            &["set", "k", "v", "ex", "1", "px", "1"],
            &["set", "k", "v", "keepttl", "ex", "1"],
            &["set", "k", "v", "ex"],
            &["set", "k", "v", "bogus"],
        ] {
            assert_eq!(error_of(words), SYNTAX, "{words:?}");
        }
        assert_eq!(error_of(&["set", "k", "v", "ex", "x"]), NOT_AN_INTEGER);
        for amount in ["0", "-1", "9223372036854775807"] {
            assert_eq!(
                error_of(&["set", "k", "v", "ex", amount]),
                "ERR invalid expire time in 'set' command"
            );
        }
    }

    /// Wrong arities and unknown commands are errors, answered without the state.
    #[test]
    fn bad_requests_are_answered_at_once() {
        assert_eq!(
            error_of(&["GET"]),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            error_of(&["mset", "a", "1", "b"]),
            "ERR wrong number of arguments for 'mset' command"
        );
        assert!(error_of(&["frobnicate", "x"]).starts_with("ERR unknown command 'frobnicate'"));
        assert_eq!(
            error_of(&["decrby", "k", "-9223372036854775808"]),
            "ERR decrement would overflow"
        );
    }

    /// CONFIG GET answers the parameters redis-benchmark asks for, as pairs.
    #[test]
    fn config_get_answers_what_redis_benchmark_asks() {
        let bulk = |text: &'static str| Reply::Bulk(Bytes::from_static(text.as_bytes()));
        assert_eq!(
            plan_of(&["config", "get", "save"]),
            Plan::Now(Reply::Array(vec![bulk("save"), bulk("")]))
        );
        assert_eq!(
            plan_of(&["CONFIG", "GET", "appendonly", "maxmemory"]),
            Plan::Now(Reply::Array(vec![bulk("appendonly"), bulk("no")]))
        );
        assert!(error_of(&["config", "set", "save", ""]).contains("unknown subcommand"));
    }

    /// Reads answer from the store at the reader's clock.
    #[test]
    fn reads_answer_at_the_readers_clock() {
        let mut store = Store::default();
        let Plan::Write(op) = plan_of(&["set", "k", "v", "px", "1500"]) else {
            panic!("not a write")
        };
        let record = super::super::codec::Batch {
            now_ms: 1_000,
            ops: vec![op],
        }
        .encode();
        understudy::client::StateMachine::apply(&mut store, understudy::Lsn(1), &record);
        let answer = |words: &[&str], now_ms| match plan_of(words) {
            Plan::Read(read) => read.answer(&store, now_ms),
            other => panic!("{other:?}"),
        };
        assert_eq!(answer(&["ttl", "k"], 1_000), Reply::Integer(2));
        assert_eq!(answer(&["pttl", "k"], 1_000), Reply::Integer(1_500));
        assert_eq!(answer(&["exists", "k", "k", "x"], 1_000), Reply::Integer(2));
        assert_eq!(
            answer(&["mget", "k", "x"], 1_000),
            Reply::Array(vec![Reply::Bulk(Bytes::from_static(b"v")), Reply::Nil])
        );
        assert_eq!(answer(&["get", "k"], 2_500), Reply::Nil);
        assert_eq!(answer(&["ttl", "k"], 2_500), Reply::Integer(-2));
        assert_eq!(answer(&["dbsize"], 2_500), Reply::Integer(0));
    }
}
