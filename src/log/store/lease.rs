//! A node's lease on a shared log: what a store that several processes
//! write ([`LogStore::join`](super::LogStore::join)) hands the engine, and
//! what the service watches to learn that this process lost its place.
//!
//! The database decides who holds a lease, on its own clock. This side only
//! keeps a local deadline, counted from *before* the last renewal was sent
//! and ending a quarter of the lease early: past it the node starts no
//! participant call, because a survivor may be about to fence it. A
//! renewal the database accepts later (nobody fenced the node meanwhile)
//! lets it go on; one the database refuses loses the lease for good.
//!
//! The local deadline is kept on the real clock, so that a test's paused
//! clock never stops a real lease from lapsing. A lease of an in-memory
//! cluster (`testing::MemCluster`), whose database clock is tokio's, keeps
//! it on tokio's clock instead.

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// This process's membership of a shared log: its node id, its fencing
/// token, and whether it still holds its lease.
///
/// Once lost, a lease stays lost: the store refuses every later write of
/// this token, and the engine does not join again by itself. Restart the
/// engine (as after a crash) to join with a new token.
#[derive(Debug)]
pub struct Lease {
    node: String,
    token: u64,
    ttl: Duration,
    /// Until when this node may start calls: a quarter of the lease before
    /// it would end, counted from the moment the last renewal was sent.
    deadline: Mutex<Instant>,
    /// Why the lease ended, once it has.
    why: Mutex<Option<String>>,
    lost: CancellationToken,
    renewed: Notify,
    /// One permit per accepted renewal, for the engine's adoption scan:
    /// its cadence is the renewals'.
    scans: Notify,
    /// The clock the deadline is kept on.
    clock: Clock,
}

/// The clock a lease's local deadline is kept on.
#[derive(Clone, Copy, Debug)]
enum Clock {
    /// The operating system's monotonic clock.
    Real,
    /// Tokio's clock, which a test may pause (an in-memory cluster's).
    #[cfg(feature = "testing")]
    Tokio,
}

impl Clock {
    fn now(self) -> Instant {
        match self {
            Clock::Real => Instant::now(),
            #[cfg(feature = "testing")]
            Clock::Tokio => tokio::time::Instant::now().into_std(),
        }
    }
}

impl Lease {
    /// A lease just granted to `node` with fencing token `token`, for `ttl`
    /// from `sent`, the moment the request that granted it was sent.
    pub fn granted(node: impl Into<String>, token: u64, ttl: Duration, sent: Instant) -> Lease {
        Lease::on(Clock::Real, node.into(), token, ttl, sent)
    }

    /// Like [`Lease::granted`], with the deadline on tokio's clock: `sent`
    /// comes from `tokio::time::Instant::now().into_std()`.
    #[cfg(feature = "testing")]
    pub(crate) fn granted_on_tokio_clock(
        node: String,
        token: u64,
        ttl: Duration,
        sent: Instant,
    ) -> Lease {
        Lease::on(Clock::Tokio, node, token, ttl, sent)
    }

    fn on(clock: Clock, node: String, token: u64, ttl: Duration, sent: Instant) -> Lease {
        Lease {
            clock,
            node,
            token,
            ttl,
            deadline: Mutex::new(sent + ttl - ttl / 4),
            why: Mutex::new(None),
            lost: CancellationToken::new(),
            renewed: Notify::new(),
            scans: Notify::new(),
        }
    }

    /// The node's id, as the shared log knows it.
    pub fn node_id(&self) -> &str {
        &self.node
    }

    /// The fencing token of this incarnation of the node: it only ever
    /// grows, and every write of the log carries it.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// How long the lease lasts after each renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether this node may start a participant call now: it holds its
    /// lease and is inside its local deadline.
    pub fn is_held(&self) -> bool {
        !self.lost.is_cancelled() && self.clock.now() < *crate::sync::lock(&self.deadline)
    }

    /// Whether the lease has ended for good (fenced, refused, or left).
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Waits until this node may start a call: true at once while the
    /// lease is held, true after a late renewal the database accepted,
    /// false once the lease is lost.
    pub async fn held(&self) -> bool {
        loop {
            let renewed = self.renewed.notified();
            if self.is_lost() {
                return false;
            }
            if self.is_held() {
                return true;
            }
            tokio::select! {
                _ = renewed => {}
                _ = self.lost.cancelled() => {}
            }
        }
    }

    /// Resolves once the lease has ended, with why.
    pub async fn lost(&self) -> String {
        self.lost.cancelled().await;
        self.lost_reason().unwrap_or_default()
    }

    /// Why the lease ended, or `None` while it lasts.
    pub fn lost_reason(&self) -> Option<String> {
        crate::sync::lock(&self.why).clone()
    }

    /// Records a renewal the database accepted, whose request was sent at
    /// `sent`.
    pub fn renewed(&self, sent: Instant) {
        if self.is_lost() {
            return;
        }
        let was_held = self.is_held();
        {
            let mut deadline = crate::sync::lock(&self.deadline);
            *deadline = (*deadline).max(sent + self.ttl - self.ttl / 4);
        }
        if !was_held && self.is_held() {
            tracing::info!(node = %self.node, "lease renewed again; calls go on");
            metrics::gauge!(crate::metrics::LEASE_HELD).set(1.0);
        }
        self.renewed.notify_waiters();
        self.scans.notify_one();
    }

    /// Resolves after the next renewal the database accepts (at once if
    /// one came since the last call).
    pub(crate) async fn next_renewal(&self) {
        self.scans.notified().await;
    }

    /// Records a renewal that could not be made (`why`): past the local
    /// deadline, calls wait for the next one that succeeds.
    pub fn missed(&self, why: &str) {
        if !self.is_lost() && !self.is_held() {
            tracing::error!(node = %self.node, reason = %why, "the lease could not be renewed before its local deadline; no call starts until it is");
            metrics::gauge!(crate::metrics::LEASE_HELD).set(0.0);
        } else {
            tracing::warn!(node = %self.node, reason = %why, "the lease could not be renewed; trying again");
        }
    }

    /// Marks the lease lost for `why`: another node fenced this one (the
    /// first reason stands).
    pub fn lose(&self, why: String) {
        if self.end(why.clone()) {
            tracing::error!(node = %self.node, token = self.token, reason = %why, "lease lost: this node starts no more calls and writes nothing more");
        }
    }

    /// Marks the lease ended because this node left the log.
    pub fn left(&self) {
        self.end("this node left the log".into());
    }

    /// Ends the lease for `why`; false if it had ended already.
    fn end(&self, why: String) -> bool {
        {
            let mut slot = crate::sync::lock(&self.why);
            if slot.is_some() {
                return false;
            }
            *slot = Some(why);
        }
        metrics::gauge!(crate::metrics::LEASE_HELD).set(0.0);
        self.lost.cancel();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_held_until_a_quarter_before_its_ttl() {
        let now = Instant::now();
        let lease = Lease::granted("n", 1, Duration::from_secs(40), now);
        assert!(lease.is_held());
        let late = Lease::granted("n", 1, Duration::from_secs(4), now - Duration::from_secs(3));
        assert!(!late.is_held());
        assert!(
            !late.is_lost(),
            "a missed deadline pauses calls, it does not end the lease"
        );
    }

    #[test]
    fn a_renewal_after_the_deadline_lets_calls_go_on() {
        let late = Instant::now() - Duration::from_secs(3);
        let lease = Lease::granted("n", 1, Duration::from_secs(4), late);
        lease.renewed(Instant::now());
        assert!(lease.is_held());
    }

    #[test]
    fn a_lost_lease_is_not_brought_back_by_a_renewal() {
        let lease = Lease::granted("n", 1, Duration::from_secs(40), Instant::now());
        lease.lose("fenced".into());
        lease.renewed(Instant::now());
        assert!(!lease.is_held());
        assert_eq!(lease.lost_reason().as_deref(), Some("fenced"));
    }
}
