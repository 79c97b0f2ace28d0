//! Admission control: a counted limit on the work a server holds at once
//! (open transactions at a coordinator, requests in flight at a node).
//!
//! A request takes a [`Ticket`] from its [`Gate`] before it does anything
//! that leaves state behind; the ticket's place comes back when it is
//! dropped, whichever way the request ends (its handler returning, or
//! tonic dropping it when the caller goes away). A full gate refuses at
//! once: the caller turns the refusal into OVERLOADED (gRPC
//! `RESOURCE_EXHAUSTED` with a RetryInfo, see [`crate::wire`]), so a
//! server under more load than it can serve answers quickly with an error
//! its clients retry with backoff, instead of queueing without bound and
//! timing out. Refusing at once rather than waiting for a place keeps the
//! admitted requests' latency bounded by the limit, not by the overload.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A limit of `max` places, named for its metrics (`limit` label).
#[derive(Debug, Clone)]
pub struct Gate {
    name: &'static str,
    max: usize,
    places: Arc<Semaphore>,
}

/// A held place of a [`Gate`]; given back on drop.
#[derive(Debug)]
pub struct Ticket {
    name: &'static str,
    _permit: OwnedSemaphorePermit,
}

impl Gate {
    pub fn new(name: &'static str, max: usize) -> Gate {
        let max = max.max(1);
        if let Some(m) = crate::metrics::process() {
            m.admission_limit
                .with_label_values(&[name])
                .set(i64::try_from(max).unwrap_or(i64::MAX));
            m.admission_in_use.with_label_values(&[name]);
            m.admission_rejected.with_label_values(&[name]);
        }
        Gate {
            name,
            max,
            places: Arc::new(Semaphore::new(max)),
        }
    }

    /// A place, or None (counted as a rejection) if all are taken.
    pub fn try_enter(&self) -> Option<Ticket> {
        match self.places.clone().try_acquire_owned() {
            Ok(permit) => {
                if let Some(m) = crate::metrics::process() {
                    m.admission_in_use.with_label_values(&[self.name]).inc();
                }
                Some(Ticket {
                    name: self.name,
                    _permit: permit,
                })
            }
            Err(_) => {
                rejected(self.name);
                None
            }
        }
    }

    /// Places taken now.
    pub fn in_use(&self) -> usize {
        self.max - self.places.available_permits()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(m) = crate::metrics::process() {
            m.admission_in_use.with_label_values(&[self.name]).dec();
        }
    }
}

/// Count a request refused because `what` (a limit or a queue) was full.
pub fn rejected(what: &str) {
    if let Some(m) = crate::metrics::process() {
        m.admission_rejected.with_label_values(&[what]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::Gate;

    #[test]
    fn a_full_gate_refuses_until_a_ticket_comes_back() {
        let g = Gate::new("test_gate", 2);
        let a = g.try_enter().expect("first place");
        let b = g.try_enter().expect("second place");
        assert_eq!(g.in_use(), 2);
        let before = crate::metrics::process()
            .map(|m| m.admission_rejected.with_label_values(&["test_gate"]).get())
            .unwrap_or(0);
        assert!(g.try_enter().is_none(), "a full gate must refuse");
        let after = crate::metrics::process()
            .map(|m| m.admission_rejected.with_label_values(&["test_gate"]).get())
            .unwrap_or(0);
        assert_eq!(after, before + 1, "the refusal is counted");
        drop(a);
        assert_eq!(g.in_use(), 1);
        let c = g.try_enter().expect("a returned place is free again");
        drop((b, c));
        assert_eq!(g.in_use(), 0, "nothing is held after every ticket went");
    }
}
