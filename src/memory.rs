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

glibc also gives every thread a cache of freed blocks (the tcache: up to 7 blocks of each
of 64 sizes up to 1 KiB, about 200 KiB a thread when full). A busy gateway has some 80
threads (64 turn threads, 8 outbox workers), and the caches fill slowly as each thread
meets each size: the soak's RSS grew 3 MB over 200,000 messages and did not level off
within them, with live heap flat at about 4 MB (heaptrack). With the caches off the same
soak grew 0.37 MB, ended 5.6 MB lower, and ran as fast (5,601 against 5,617 msg/s). Only
`GLIBC_TUNABLES`, read by the loader before `main`, turns them off, so
[`exec_without_thread_caches`] makes `switchboard run` exec itself once with it set.
*/

/// The variable glibc's loader reads its tunables from, and the one we set.
const TUNABLES: &str = "GLIBC_TUNABLES";
const TCACHE: &str = "glibc.malloc.tcache_count";

/// Exec this program again with glibc's per-thread caches off (see the module doc), unless
/// `GLIBC_TUNABLES` already sets them (the user's choice, or this exec done). Returns when
/// nothing was to be done, or the exec failed (no `/proc`): the gateway then runs with the
/// caches. The process keeps its pid, arguments and open files.
pub fn exec_without_thread_caches() {
    #[cfg(target_env = "gnu")]
    {
        use std::os::unix::process::CommandExt;
        let current = std::env::var_os(TUNABLES).unwrap_or_default();
        if current.to_string_lossy().contains(TCACHE) {
            return;
        }
        let mut tunables = current;
        if !tunables.is_empty() {
            tunables.push(":");
        }
        tunables.push(format!("{TCACHE}=0"));
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new("/proc/self/exe");
        if let Some(name) = args.next() {
            command.arg0(name);
        }
        // Returns only if the exec failed.
        let _ = command.args(args).env(TUNABLES, tunables).exec();
    }
}

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
