/*!
The allocator's policy: how much freed memory the process keeps.

The gateway's memory follows its load: a backlog of thousands of messages (a bot back from
an outage, a burst over thousands of chats) allocates megabytes that are all freed a few
seconds later. glibc's malloc keeps freed memory for reuse, in one arena per thread that
allocates, and raises its thresholds for giving memory back after each large free; left to
its defaults, the resident memory of a gateway that once held a backlog stays near that
backlog's high-water mark. [`configure`] (called once, before any thread exists) and
[`release_freed`] (after bursts) keep it near what is held instead. musl's allocator
returns freed pages by itself; both are no-ops there.
*/

/// Two arenas: plenty for threads that mostly wait (with a dozen arenas, a gateway holding
/// 10,000 sessions had twice the resident memory). Blocks of 128 KiB and more come from
/// their own mappings, unmapped when freed; free memory at the top of a heap beyond 128 KiB
/// is given back. Fixed values, because glibc's dynamic ones rise after every large free
/// (up to 32 MiB), after which a burst's buffers stay resident.
pub fn configure() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

/// Hand the memory freed since the last call back to the system: the free pages inside
/// the heaps, not only at their tops. Costs a walk over the allocator's free lists
/// (a millisecond or two at tens of megabytes), so callers do it after a burst, not per
/// message.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free pages to the kernel; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}
