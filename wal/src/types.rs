//! The protocol's numbers as newtypes: [`Lsn`], [`Epoch`] and [`NodeId`].
//!
//! LSNs are dense record numbers starting at 1; `Lsn::ZERO` means "before the first record"
//! (an empty log). Epochs start at 1 once the first primary is elected; `Epoch::ZERO` is the
//! epoch of a node that has never voted. Neither wraps: `next()` asserts instead.

use std::fmt;

macro_rules! number {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name(pub $inner);

        impl $name {
            pub const ZERO: $name = $name(0);

            /// The largest value that a peer, the application or a file may carry. No real
            /// log or cluster comes near it (a billion a second for over a century); a
            /// larger value is refused where it is decoded, so that [`Self::next`] on
            /// anything read from outside cannot overflow.
            pub const LIMIT: $name = $name(<$inner>::MAX >> 2);

            /// The number after this one. Panics on overflow, which only a bug can reach.
            #[inline]
            pub fn next(self) -> $name {
                $name(self.0.checked_add(1).expect(concat!(stringify!($name), " overflow")))
            }

            /// The number before this one. Panics below zero, which only a bug can reach.
            #[inline]
            pub fn prev(self) -> $name {
                $name(self.0.checked_sub(1).expect(concat!(stringify!($name), " underflow")))
            }

            #[inline]
            pub fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.0)
            }
        }
    };
}

number!(
    /// A log sequence number: the 1-based position of a record in the log.
    Lsn(u64)
);
number!(
    /// A primary's term of office. Every record carries the epoch it was written in.
    Epoch(u64)
);
number!(
    /// A node's id in the cluster, from `--node-id` and `--peers`. Valid ids are 1 or more.
    NodeId(u16)
);

impl Lsn {
    /// How many records lie in `first..=last` (zero when `last < first`).
    #[inline]
    pub fn count_between(first: Lsn, last: Lsn) -> u64 {
        (last.0 + 1).saturating_sub(first.0)
    }

    /// `self + count`, asserting no overflow. (Not `std::ops::Add`: adding two LSNs means
    /// nothing, only an LSN and a count.)
    #[inline]
    pub fn plus(self, count: u64) -> Lsn {
        Lsn(self.0.checked_add(count).expect("Lsn overflow"))
    }
}
