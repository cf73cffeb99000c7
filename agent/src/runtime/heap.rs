//! Handing freed heap back to the kernel at the moments the agent's heap shrinks for good:
//! when an image has been unpacked (the pull's and the unpack's buffers are gone, the pod
//! runs on) and when the pod has stopped.
//!
//! Why it is needed with glibc's malloc: memory a thread frees goes back to that thread's
//! arena, not to the kernel. Only the top of an arena is returned on its own, once it is
//! larger than the trim threshold, and that threshold grows (up to 32 MiB) each time a
//! large block that was mmap'd is freed; free chunks below a live one, and the arenas of
//! the blocking-pool threads that pull and unpack images, stay resident. `malloc_trim(0)`
//! walks every arena's free chunks once and `madvise`s their whole pages away. The agent
//! calls it once per container start and once per pod stop: rarer and cheaper than the
//! `runc` processes each of those starts. Low `M_TRIM_THRESHOLD`/`M_MMAP_THRESHOLD` (the
//! `MALLOC_TRIM_THRESHOLD_` route) would give memory back too, but on every free of the
//! serving path, turning its large buffers into an mmap and munmap each.

/// Return the free pages of every malloc arena to the kernel.
pub fn release_freed_heap() {
    // The agent's one unsafe call: a libc function without a safe wrapper in nix or rustix.
    // SAFETY: malloc_trim takes no pointers and works on the allocator's own free lists
    // under the allocator's own locks; any thread may call it at any time.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
