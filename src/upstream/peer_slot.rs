//! A spare boxed peer that a backend keeps between requests. Pingora takes each request's peer
//! as a `Box<HttpPeer>` and hands it back when the attempt is done (pingora-proxy patch 13);
//! keeping that box for the next request saves cloning a peer into a new box, and dropping
//! it, on every request.

use pingora_core::upstreams::peer::HttpPeer;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// Holds at most one boxed peer; taking it and putting it back are one atomic each, without a
/// lock, so worker threads never wait on it (a thread that finds it empty clones the template).
#[derive(Debug, Default)]
pub(crate) struct PeerSlot(AtomicPtr<HttpPeer>);

// The box may be put back on one thread and taken on another.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<HttpPeer>();
};

impl PeerSlot {
    /// The spare box, if the slot holds one.
    #[inline]
    pub(crate) fn take(&self) -> Option<Box<HttpPeer>> {
        let p = self.0.swap(ptr::null_mut(), Ordering::Acquire);
        // SAFETY: a non-null pointer in the slot came from `Box::into_raw` in `put`, and the
        // swap took it out, so this caller is its only owner.
        (!p.is_null()).then(|| unsafe { Box::from_raw(p) })
    }

    /// Keeps `peer` as the spare, or drops it when the slot holds one already.
    #[inline]
    pub(crate) fn put(&self, peer: Box<HttpPeer>) {
        let p = Box::into_raw(peer);
        if self
            .0
            .compare_exchange(ptr::null_mut(), p, Ordering::Release, Ordering::Relaxed)
            .is_err()
        {
            // SAFETY: `p` came from `Box::into_raw` above and was not stored.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        drop(self.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora_core::upstreams::peer::Peer;

    fn peer(port: u16) -> Box<HttpPeer> {
        Box::new(HttpPeer::new(("127.0.0.1", port), false, String::new()))
    }

    #[test]
    fn holds_one_peer_and_gives_it_back_once() {
        let slot = PeerSlot::default();
        assert!(slot.take().is_none());
        slot.put(peer(1));
        // A second one is dropped: the slot keeps the first.
        slot.put(peer(2));
        let p = slot.take().expect("the spare");
        assert_eq!(p.address().to_string(), "127.0.0.1:1");
        assert!(slot.take().is_none());
        // Dropped with the slot (miri/valgrind would see a leak otherwise).
        slot.put(p);
    }

    #[test]
    fn threads_share_it_without_losing_or_duplicating_a_box() {
        let slot = std::sync::Arc::new(PeerSlot::default());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let slot = slot.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u16 {
                        let p = slot.take().unwrap_or_else(|| peer(i));
                        slot.put(p);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(slot.take().is_some());
        assert!(slot.take().is_none());
    }
}
