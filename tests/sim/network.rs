//! The simulated network: per-message loss, delay (with occasional long delays, which reorder),
//! duplication, and partitions given as a matrix of blocked directed links (so a partition may
//! be asymmetric: `a` hears `b` while `b` does not hear `a`).

use understudy::core::SplitMix64;

pub const MS: u64 = 1_000_000;

#[derive(Clone, Debug)]
pub struct Network {
    nodes: usize,
    /// `blocked[from * nodes + to]`: messages from `from` to `to` are dropped.
    blocked: Vec<bool>,
    pub loss_ppm: u64,
    pub duplicate_ppm: u64,
    pub delay_min: u64,
    pub delay_max: u64,
    /// Chance of a long delay (up to `long_delay_max`), which reorders messages.
    pub long_delay_ppm: u64,
    pub long_delay_max: u64,
    /// Chance that an answer to an append (the acknowledgement a lease is renewed by) is held
    /// back by a TCP retransmission: `RETRANSMIT_MIN..=RETRANSMIT_MAX` while later messages
    /// overtake it.
    pub retransmit_ppm: u64,
}

/// A retransmission-sized delay: TCP's minimum retransmission timeout is 200 ms, and one
/// more backoff doubles it.
pub const RETRANSMIT_MIN: u64 = 200 * MS;
pub const RETRANSMIT_MAX: u64 = 450 * MS;

impl Network {
    pub fn new(nodes: usize) -> Network {
        Network {
            nodes,
            blocked: vec![false; nodes * nodes],
            loss_ppm: 0,
            duplicate_ppm: 0,
            delay_min: MS / 2,
            delay_max: 5 * MS,
            long_delay_ppm: 0,
            long_delay_max: 0,
            retransmit_ppm: 0,
        }
    }

    pub fn blocked(&self, from: usize, to: usize) -> bool {
        self.blocked[from * self.nodes + to]
    }

    pub fn block(&mut self, from: usize, to: usize) {
        self.blocked[from * self.nodes + to] = true;
    }

    pub fn heal(&mut self) {
        self.blocked.iter_mut().for_each(|b| *b = false);
    }

    /// Splits the nodes into the two sides of `mask` (bit i set = side A); nothing crosses.
    pub fn split(&mut self, mask: u64) {
        for a in 0..self.nodes {
            for b in 0..self.nodes {
                if (mask >> a) & 1 != (mask >> b) & 1 {
                    self.block(a, b);
                }
            }
        }
    }

    /// Faults off, delays normal: the heal phase.
    pub fn calm(&mut self) {
        self.heal();
        self.loss_ppm = 0;
        self.duplicate_ppm = 0;
        self.long_delay_ppm = 0;
        self.retransmit_ppm = 0;
        self.delay_min = MS / 2;
        self.delay_max = 5 * MS;
    }

    /// Delivery delays for one message sent now: none if lost, two if duplicated.
    /// `acknowledgement`: the message answers an append (see `retransmit_ppm`).
    pub fn plan(
        &self,
        rng: &mut SplitMix64,
        from: usize,
        to: usize,
        acknowledgement: bool,
        delays: &mut Vec<u64>,
    ) {
        delays.clear();
        if self.blocked(from, to) || rng.below(1_000_000) < self.loss_ppm {
            return;
        }
        let copies = if rng.below(1_000_000) < self.duplicate_ppm {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = self.delay_min + rng.below(self.delay_max - self.delay_min + 1);
            if rng.below(1_000_000) < self.long_delay_ppm {
                delay += rng.below(self.long_delay_max + 1);
            }
            if acknowledgement && rng.below(1_000_000) < self.retransmit_ppm {
                delay += RETRANSMIT_MIN + rng.below(RETRANSMIT_MAX - RETRANSMIT_MIN + 1);
            }
            delays.push(delay);
        }
    }
}
