//! The TCP settings of every connection the services open to Redis and PostgreSQL: keepalive
//! probes and a user timeout. Without them a peer that vanished without a word (a silent
//! network partition, a host that died, a failover without a reset) is noticed after the
//! kernel's defaults: two hours of silence (keepalive) or about fifteen minutes of
//! retransmissions. With them, within about [`USER_TIMEOUT`].
//!
//! They free this side only. The server's side of such a connection is freed by the server's
//! own keepalive (PostgreSQL's `tcp_keepalives_*`, Redis's `tcp-keepalive`: see
//! deploy/README.md, "Network partitions").

use std::time::Duration;

/// Silence on a connection before the first keepalive probe.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);

/// Time between unanswered keepalive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Unanswered probes after which the connection is given up (when no user timeout is set;
/// with one, the user timeout decides).
pub const KEEPALIVE_PROBES: u32 = 3;

/// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged, or keepalive probes
/// unanswered, before the kernel closes the connection. Keepalive alone does not probe a
/// connection with data in flight, whose retransmissions last about fifteen minutes. Above
/// [`KEEPALIVE_IDLE`] + [`KEEPALIVE_INTERVAL`] × [`KEEPALIVE_PROBES`], so probing runs its course.
pub const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// The user timeout of a connection whose calls may each wait `call_timeout`: never below the
/// call's own timeout, so the kernel never ends a call its caller still waits for.
pub fn user_timeout(call_timeout: Duration) -> Duration {
    USER_TIMEOUT.max(call_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probing_ends_before_the_user_timeout() {
        assert!(KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_PROBES <= USER_TIMEOUT);
    }

    #[test]
    fn a_longer_call_timeout_wins() {
        assert_eq!(user_timeout(Duration::from_secs(1)), USER_TIMEOUT);
        assert_eq!(
            user_timeout(Duration::from_secs(120)),
            Duration::from_secs(120)
        );
    }
}
