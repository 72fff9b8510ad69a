//! Where a row stands in the WAL: the [`Cursor`] clients resume from, and the WAL history
//! ([`history_id`]) that makes cursors of different databases incomparable.

use std::fmt;
use std::str::FromStr;

/// Position of a row in the WAL: (commit LSN of its transaction, index of the row inside the
/// transaction, from 0), tagged with the WAL history it belongs to. Within one history cursors
/// are totally ordered, and the same on every relay that reads the same WAL.
///
/// Encoded for clients as 32 lowercase hex digits: 16 for the LSN, 8 for the index, 8 for the
/// history. Opaque, URL-safe, and within one history ordered the same way as strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cursor {
    /// Commit LSN of the transaction (the `final_lsn` of its Begin message).
    pub lsn: u64,
    /// Position of the row inside its transaction.
    pub index: u32,
    /// The WAL history ([`history_id`]): cursors of different histories are not comparable.
    pub history: u32,
}

impl Cursor {
    /// The position just before LSN `lsn`: every row of a transaction that commits at or after
    /// `lsn` is newer, every row of one that committed before it is not.
    pub fn before(lsn: u64, history: u32) -> Cursor {
        match lsn.checked_sub(1) {
            Some(lsn) => Cursor {
                lsn,
                index: u32::MAX,
                history,
            },
            None => Cursor {
                lsn: 0,
                index: 0,
                history,
            },
        }
    }
}

/// The WAL history a cursor belongs to: a 32-bit FNV-1a hash of the cluster's system
/// identifier and timeline (IDENTIFY_SYSTEM). A restore from a backup or a promotion starts a new
/// timeline, a new cluster a new system identifier: cursors of the old history are then refused
/// as incomplete instead of being compared with LSNs they have nothing to do with.
pub fn history_id(system_id: &str, timeline: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in system_id.bytes().chain(timeline.to_be_bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}{:08x}{:08x}", self.lsn, self.index, self.history)
    }
}

/// A string that is not a cursor this relay issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor: expected the 32 hex digits of an event's `cursor`")]
pub struct InvalidCursor;

impl FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidCursor);
        }
        let hex32 = |part: &str| u32::from_str_radix(part, 16).map_err(|_| InvalidCursor);
        Ok(Cursor {
            lsn: u64::from_str_radix(&s[..16], 16).map_err(|_| InvalidCursor)?,
            index: hex32(&s[16..24])?,
            history: hex32(&s[24..])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_order_as_strings() {
        let history = history_id("7441040390381235290", 1);
        let at = |lsn, index| Cursor {
            lsn,
            index,
            history,
        };
        let (a, b, c) = (
            at(0x16B3_7A28, 2),
            at(0x16B3_7A28, 10),
            at(0x1_0000_0000, 0),
        );
        for x in [a, b, c] {
            assert_eq!(x.to_string().parse::<Cursor>(), Ok(x));
        }
        assert!(a < b && b < c);
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
        assert!("zz".parse::<Cursor>().is_err());
        assert!("g0000000000000000000000000000000"
            .parse::<Cursor>()
            .is_err());
        assert!(
            "000000000000000000000000".parse::<Cursor>().is_err(),
            "24 digits"
        );
        assert!(Cursor::before(0x100, history) < at(0x100, 0));
        assert!(Cursor::before(0x100, history) > at(0xff, 7));
        assert_ne!(history, history_id("7441040390381235290", 2));
    }
}
