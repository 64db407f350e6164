//! An intrusive Treiber stack that any thread may push to and any thread
//! may empty whole.
//!
//! There is no single-node pop: consumers take the whole list with one
//! `swap(null)`, so no node can be removed and pushed again between a
//! consumer's load of the head and its CAS, and there is no ABA whatever
//! the number of consumers. Pushers only write their own unpublished node.
//! The provider's shared cache, the heap's pending list and loom's models
//! (`tests/loom.rs`) use it.

use crate::sync::atomic::{AtomicPtr, Ordering};

/// A node type with an atomic link word.
pub trait Linked: Sized {
    /// The link used while the node is on a stack.
    fn link(&self) -> &AtomicPtr<Self>;
}

/// The stack.
pub struct Stack<T: Linked> {
    head: AtomicPtr<T>,
}

impl<T: Linked> Stack<T> {
    /// An empty stack.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Stack {
            head: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// An empty stack.
    #[cfg(loom)]
    pub fn new() -> Self {
        Stack {
            head: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// Whether the stack looked empty (a hint).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.load(Ordering::Relaxed).is_null()
    }

    /// Pushes `n`. After the publishing CAS the caller touches nothing in
    /// `n`: a consumer may take it at once.
    ///
    /// # Safety
    /// `n` is live, on no stack, and stays live until a consumer takes it.
    pub unsafe fn push(&self, n: *mut T) {
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: `n` is exclusively ours until the CAS publishes it.
            unsafe { (*n).link().store(head, Ordering::Relaxed) };
            match self
                .head
                .compare_exchange_weak(head, n, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    /// The first node, for a walk along the links by a reader that knows
    /// no consumer can take the stack meanwhile (pushers only prepend, so
    /// the nodes it reaches stay linked).
    #[inline]
    pub fn head(&self) -> *mut T {
        self.head.load(Ordering::Acquire)
    }

    /// Takes the whole stack: a list linked through `link`, null-terminated,
    /// now exclusively the caller's.
    #[inline]
    pub fn take_all(&self) -> *mut T {
        if self.is_empty() {
            return core::ptr::null_mut();
        }
        self.head.swap(core::ptr::null_mut(), Ordering::Acquire)
    }
}

impl<T: Linked> Default for Stack<T> {
    fn default() -> Self {
        Self::new()
    }
}
