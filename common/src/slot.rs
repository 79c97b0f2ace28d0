//! [`Slot`]: the replica of a group a node runs now, if any, shared by
//! the services that answer for it and the admin calls that start and
//! stop it at run time.

use std::sync::{Arc, RwLock};

/// A shared, replaceable `Option<Arc<T>>`; clones see the same value.
pub struct Slot<T>(Arc<RwLock<Option<Arc<T>>>>);

impl<T> Slot<T> {
    pub fn get(&self) -> Option<Arc<T>> {
        match self.0.read() {
            Ok(v) => v.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    pub fn set(&self, v: Option<Arc<T>>) {
        match self.0.write() {
            Ok(mut s) => *s = v,
            Err(p) => *p.into_inner() = v,
        }
    }
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot(self.0.clone())
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot(Arc::new(RwLock::new(None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_one_value() {
        let a: Slot<u32> = Slot::default();
        let b = a.clone();
        assert!(b.get().is_none());
        a.set(Some(Arc::new(7)));
        assert_eq!(b.get().as_deref(), Some(&7));
        b.set(None);
        assert!(a.get().is_none());
    }
}
