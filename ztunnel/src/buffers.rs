//! Copy buffers shared through a per-thread pool.
//!
//! A proxy holds thousands of connections, most of them idle at any moment.
//! A connection takes a buffer only while bytes are in flight and returns
//! it as soon as a read would wait, so memory follows the bytes moving, not
//! the connections open.

use std::cell::RefCell;

/// The size of every buffer: several full TLS records (16 KiB), so a busy
/// connection is not bound by syscalls.
pub const SIZE: usize = 64 * 1024;

/// A pooled buffer of [`SIZE`] bytes.
pub type Buffer = Box<[u8]>;

/// Spare buffers a thread keeps (1 MiB at most).
const KEEP: usize = 16;

thread_local! {
    static SPARE: RefCell<Vec<Buffer>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from this thread's pool, or a new one.
pub fn take() -> Buffer {
    SPARE
        .with(|spare| spare.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; SIZE].into_boxed_slice())
}

/// Returns `buffer` to this thread's pool (or frees it if the pool is full).
pub fn give(buffer: Buffer) {
    SPARE.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < KEEP {
            spare.push(buffer);
        }
    });
}
