//! Process-wide allocator settings, applied once at start-up.
//!
//! Every inspection allocates and frees a few large buffers (decoded pixels, the input tensor,
//! anomaly maps, the overlay), hundreds of times a second. glibc's malloc adapts its thresholds
//! as it goes: a freed block above its mapping threshold raises the threshold, but the free
//! memory at the top of a heap is handed back to the kernel as soon as it exceeds twice that,
//! so a batch that freed its buffers had them faulted in again, page by page and zeroed, on the
//! next batch. On the 2-core build machine that was half of the preprocessing time at batch 8
//! and up to 5 % of the model stage (BENCHMARKS.md, 2026-12-04). Fixed thresholds keep freed
//! frame buffers in the process for the next frame; memory is still returned when more than
//! [`TRIM_THRESHOLD`] lies free at the top of a heap.
//!
//! A replacement allocator (mimalloc) was measured too: it removed the faults of the sequential
//! path alike but made the live pipeline a few percent slower on the same machine, so glibc
//! stays, with these two settings (which also apply to ONNX Runtime's own allocations).

/// Requests up to this size come from the heap rather than from a mapping of their own
/// (glibc's default starts at 128 KiB; a 1280×1024 RGB frame is 3.75 MiB).
pub const MMAP_THRESHOLD: usize = 16 << 20;

/// Free memory at the top of a heap that is kept for reuse instead of returned to the kernel.
pub const TRIM_THRESHOLD: usize = 64 << 20;

/// Applies the settings above. Call it first thing in `main`, so that every buffer is served
/// under the same settings; elsewhere than glibc it does nothing. Returns whether both settings
/// were accepted.
pub fn keep_frame_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt takes no pointers and changes only malloc's tuning parameters, under
        // malloc's own lock: it is sound at any time, from any thread.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_thresholds() {
        assert!(keep_frame_buffers());
    }
}
