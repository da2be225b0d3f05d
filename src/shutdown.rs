//! Shutdown signalling: one trigger, any number of waiters, and the
//! difference between "stop accepting and drain" and "drop everything now".

use tokio::sync::watch;

/// Phase of a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    /// Stop accepting, finish in-flight requests, close idle connections.
    Draining,
    /// The grace period is over: close everything.
    Abort,
}

/// Starts a shutdown.
#[derive(Debug, Clone)]
pub struct Trigger(watch::Sender<Phase>);

/// Observes a shutdown.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<Phase>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(Phase::Running);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn drain(&self) {
        self.0.send_if_modified(|p| advance(p, Phase::Draining));
    }

    pub fn abort(&self) {
        self.0.send_if_modified(|p| advance(p, Phase::Abort));
    }

    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }
}

fn advance(current: &mut Phase, to: Phase) -> bool {
    if *current < to {
        *current = to;
        true
    } else {
        false
    }
}

impl Shutdown {
    pub fn phase(&self) -> Phase {
        *self.0.borrow()
    }

    /// Resolves once the phase is at least `phase` (or the trigger is gone,
    /// which counts as abort).
    pub async fn reached(&mut self, phase: Phase) {
        let _ = self.0.wait_for(|p| *p >= phase).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward() {
        let (t, mut s) = channel();
        assert_eq!(s.phase(), Phase::Running);
        t.abort();
        t.drain();
        assert_eq!(s.phase(), Phase::Abort);
        s.reached(Phase::Draining).await;
    }

    #[tokio::test]
    async fn dropping_the_trigger_releases_waiters() {
        let (t, mut s) = channel();
        drop(t);
        s.reached(Phase::Abort).await;
    }
}
