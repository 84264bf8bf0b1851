// A pingora-gateway patch (not Cloudflare's code), under the crate's license:
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! pingora-gateway patch (4): one fast timer per task, extended lazily.
//!
//! A keep-alive connection's task runs one timed wait after another (the client's next
//! request, the upstream's response, the client's next request...). Registering a timer for
//! each wait, subscribing to its bucket and unsubscribing when the wait ends cost ~500
//! instructions per wait. A task wrapped in [`with_task_timer`] keeps one [`TaskTimer`]
//! instead: a [`crate::Timeout`] that has to wait borrows it, moves its deadline (a clock read)
//! and keeps the bucket it already waits on whenever that bucket fires no later than the new
//! deadline. When that earlier bucket fires, the wait re-checks and re-arms for its real
//! deadline, so a connection re-registers about once per timeout period instead of on every
//! wait. A second wait of the same task running at the same time (a request body read beside
//! the upstream's response) finds the timer lent and registers its own, as before.

use super::fast_timeout::{check_clock_thread_at, TIMER_MANAGER};
use super::timer::Time;
use pin_project_lite::pin_project;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::sync::futures::OwnedNotified;

/// The bucket a task timer waits on.
struct Armed {
    tick: Time,
    fired: Arc<AtomicBool>,
    notified: Pin<Box<OwnedNotified>>,
    /// The waker `notified` was last polled with: polling it again with the same one only
    /// takes its mutex to change nothing, and `fired` is set before the bucket wakes it.
    waker: Option<Waker>,
}

/// A task's reusable timer: the current wait's deadline and the bucket it is subscribed to.
pub(crate) struct TaskTimer {
    deadline: Time,
    armed: Option<Armed>,
}

impl TaskTimer {
    fn new() -> Box<TaskTimer> {
        Box::new(TaskTimer {
            deadline: Time::ZERO,
            armed: None,
        })
    }

    /// Starts a wait of `duration` from now: keeps the bucket it is subscribed to unless that
    /// one fires after the new deadline (or has fired).
    pub(crate) fn start(&mut self, duration: Duration) {
        let now = Instant::now();
        self.deadline = TIMER_MANAGER.tick_at(now, duration);
        let keep = self
            .armed
            .as_ref()
            .is_some_and(|a| a.tick <= self.deadline && !a.fired.load(Ordering::Relaxed));
        if !keep {
            self.arm(now);
        }
    }

    /// Subscribes to the deadline's bucket; `now` is a clock reading for the clock thread's
    /// liveness check.
    fn arm(&mut self, now: Instant) {
        check_clock_thread_at(&TIMER_MANAGER, now);
        let (notify, fired) = TIMER_MANAGER.register_tick(self.deadline).into_parts();
        self.armed = Some(Armed {
            tick: self.deadline,
            fired,
            notified: Box::pin(notify.notified_owned()),
            waker: None,
        });
    }

    /// Whether the deadline has passed; subscribes the task to be woken when it may have.
    pub(crate) fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let Some(a) = self.armed.as_mut() else {
                return true; // unreachable after start(); treat as elapsed rather than hang
            };
            if !a.fired.load(Ordering::SeqCst) {
                if a.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    return false;
                }
                if a.notified.as_mut().poll(cx).is_pending() {
                    a.waker = Some(cx.waker().clone());
                    return false;
                }
            }
            if a.tick >= self.deadline {
                return true;
            }
            // An earlier bucket of a previous wait fired: wait on the real deadline's.
            self.arm(Instant::now());
            if self
                .armed
                .as_ref()
                .is_some_and(|a| a.fired.load(Ordering::SeqCst))
            {
                // The manager is paused for a fork and fires every new timer at once, as the
                // per-wait timers do then.
                return true;
            }
        }
    }
}

/// A task's timer, as its [`WithTaskTimer`] holds it.
enum Slot {
    /// The task has no timer yet: its first wait creates one.
    Fresh,
    /// The timer is lent to one of the task's waits.
    Lent,
    Here(Box<TaskTimer>),
}

thread_local! {
    /// The slot of the task this thread is polling (inside [`WithTaskTimer::poll`]), else null.
    static CURRENT: Cell<*mut Slot> = const { Cell::new(std::ptr::null_mut()) };
}

/// Runs `f` on the polled task's slot, if a task with a timer is being polled.
fn with_current<R>(f: impl FnOnce(&mut Slot) -> R) -> Option<R> {
    let p = CURRENT.with(|c| c.get());
    // SAFETY: non-null only while `WithTaskTimer::poll` runs on this thread, and then it
    // points to that (pinned) future's slot, which nothing else touches during the poll;
    // `Restore` puts the previous pointer back when the poll returns or unwinds.
    (!p.is_null()).then(|| f(unsafe { &mut *p }))
}

/// The polled task's timer, if it has one and it is not lent to another wait.
pub(crate) fn borrow() -> Option<Box<TaskTimer>> {
    with_current(|s| match std::mem::replace(s, Slot::Lent) {
        Slot::Here(t) => Some(t),
        Slot::Fresh => Some(TaskTimer::new()),
        Slot::Lent => None,
    })
    .flatten()
}

/// Gives a timer back to the polled task; dropped (unsubscribed) when no task is being
/// polled or the task already has one (the wait moved between tasks).
pub(crate) fn give_back(t: Box<TaskTimer>) {
    with_current(|s| {
        if matches!(s, Slot::Lent) {
            *s = Slot::Here(t);
        }
    });
}

/// A timer borrowed by one wait: goes back to the task when the wait ends or is dropped.
pub(crate) struct Lent(Option<Box<TaskTimer>>);

impl Lent {
    pub(crate) fn new(t: Box<TaskTimer>) -> Lent {
        Lent(Some(t))
    }

    pub(crate) fn get(&mut self) -> &mut TaskTimer {
        self.0.as_mut().expect("a lent timer is held until dropped")
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            give_back(t);
        }
    }
}

pin_project! {
    /// A task's future with one reusable fast timer for its [`crate::timeout`]s; see
    /// [`with_task_timer`].
    #[must_use = "futures do nothing unless you `.await` or poll them"]
    pub struct WithTaskTimer<F> {
        #[pin]
        inner: F,
        timer: Slot,
    }
}

/// Runs `fut` (a connection's whole task) with one fast timer that its successive
/// [`crate::timeout`] waits reuse instead of registering one each; see the module docs.
pub fn with_task_timer<F: Future>(fut: F) -> WithTaskTimer<F> {
    WithTaskTimer {
        inner: fut,
        timer: Slot::Fresh,
    }
}

/// Puts the previous task's slot back when a poll returns or unwinds.
struct Restore(*mut Slot);

impl Drop for Restore {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

impl<F: Future> Future for WithTaskTimer<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let mine: *mut Slot = this.timer;
        let _restore = Restore(CURRENT.with(|c| c.replace(mine)));
        this.inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeout;
    use std::future::pending;

    fn slot_is_no_task() -> bool {
        CURRENT.with(|c| c.get().is_null())
    }

    /// The timer a task holds between waits (its address), if any.
    fn held(t: &Slot) -> Option<*const TaskTimer> {
        match t {
            Slot::Here(b) => Some(&**b as *const TaskTimer),
            _ => None,
        }
    }

    #[tokio::test]
    async fn successive_waits_reuse_the_task_timer_and_keep_their_deadlines() {
        let mut task = Box::pin(with_task_timer(async {
            // A long wait that completes at once, then a shorter one that must still fire
            // on its own deadline (the bucket of the first one is later: re-armed earlier).
            let first = timeout(Duration::from_secs(5), tokio::task::yield_now()).await;
            assert!(first.is_ok());
            let t = Instant::now();
            let short = timeout(Duration::from_millis(100), pending::<()>()).await;
            assert!(short.is_err());
            let took = t.elapsed();
            assert!(
                took >= Duration::from_millis(90) && took < Duration::from_secs(2),
                "{took:?}"
            );

            // A short wait armed the bucket; a longer one after it must not end at that
            // earlier bucket but wait for its own deadline.
            let _ = timeout(Duration::from_millis(50), tokio::task::yield_now()).await;
            let t = Instant::now();
            let long = timeout(Duration::from_millis(400), pending::<()>()).await;
            assert!(long.is_err());
            let took = t.elapsed();
            assert!(
                took >= Duration::from_millis(390) && took < Duration::from_secs(3),
                "{took:?}"
            );
        }));
        std::future::poll_fn(|cx| task.as_mut().poll(cx)).await;
        assert!(
            slot_is_no_task(),
            "the slot is cleared after the task's poll"
        );
    }

    #[tokio::test]
    async fn one_timer_per_task_lent_to_one_wait_at_a_time() {
        let mut task = Box::pin(with_task_timer(async {
            // Two waits at once: one borrows the task's timer, the other registers its own;
            // each fires on its own deadline.
            let t = Instant::now();
            let a = async {
                let r = timeout(Duration::from_millis(100), pending::<()>()).await;
                (r.is_err(), t.elapsed())
            };
            let b = async {
                let r = timeout(Duration::from_millis(300), pending::<()>()).await;
                (r.is_err(), t.elapsed())
            };
            let ((ea, ta), (eb, tb)) = tokio::join!(a, b);
            assert!(ea && eb);
            assert!(
                ta >= Duration::from_millis(90) && ta < Duration::from_millis(290),
                "{ta:?}"
            );
            assert!(
                tb >= Duration::from_millis(290) && tb < Duration::from_secs(3),
                "{tb:?}"
            );
        }));
        std::future::poll_fn(|cx| task.as_mut().poll(cx)).await;

        // Between waits the task holds one timer, and the next wait gets the same one.
        let mut seen = Vec::new();
        let mut task = Box::pin(with_task_timer(async {
            for _ in 0..3 {
                let r = timeout(Duration::from_secs(5), tokio::task::yield_now()).await;
                assert!(r.is_ok());
                tokio::task::yield_now().await;
            }
        }));
        std::future::poll_fn(|cx| {
            let r = task.as_mut().poll(cx);
            seen.push(held(&task.timer));
            r
        })
        .await;
        let held: Vec<_> = seen.iter().flatten().collect();
        assert!(held.len() >= 3, "{seen:?}");
        assert!(
            held.windows(2).all(|w| w[0] == w[1]),
            "one timer for the task: {seen:?}"
        );
    }

    #[tokio::test]
    async fn waits_outside_a_task_timer_register_their_own() {
        assert!(borrow().is_none());
        let t = Instant::now();
        assert!(timeout(Duration::from_millis(50), pending::<()>())
            .await
            .is_err());
        assert!(t.elapsed() >= Duration::from_millis(40));
        assert!(slot_is_no_task());
    }
}
