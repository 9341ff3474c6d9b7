//! Read-only memory maps of a window of a content-addressed artifact, for the one-copy send
//! path of the plain-HTTP loop (`conn.rs`, [`FileSend`](crate::FileSend)).
//!
//! Why a map and not `pread` into a buffer: the copy path exists for clients on this host, where
//! someone's CPU copies every byte anyway. From a map, `write(2)` copies the page-cache bytes
//! once, straight into the socket's buffers; a `pread` buffer would add a second copy (what nginx
//! with `sendfile off` does). Measured in docs/benchmarks.md ("HTTP artifacts").
//!
//! The hazard of a file map is a file that shrinks under it: a process that *reads* a mapped
//! page past the file's new end gets `SIGBUS` and dies. So a [`Window`] never hands its bytes to
//! user code: the only thing it does with them is pass them to `write(2)`, where the kernel
//! copies them. A page that vanished then faults inside the kernel's copy, which the kernel
//! turns into a short write or `EFAULT` for that call — no signal (tested below: a window of a
//! file truncated after mapping). The connection then ends like one whose file ended early.

use std::ffi::c_void;
use std::fs::File;
use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

/// A read-only, shared map of `[start, start + len)` of a file (the map itself begins at the
/// page boundary at or below `start`).
pub(crate) struct Window {
    base: NonNull<c_void>,
    /// Bytes mapped from `base` (the page-aligned start included).
    mapped: usize,
    /// Where the requested bytes begin within the map.
    skip: usize,
}

// SAFETY: the map is read-only memory owned by this value alone; reading it from any thread is
// sound, and it is unmapped exactly once, in `drop`.
#[allow(unsafe_code)]
unsafe impl Send for Window {}
// SAFETY: as above; `&Window` only ever passes the bytes to `write(2)`.
#[allow(unsafe_code)]
unsafe impl Sync for Window {}

impl Window {
    /// Maps `len` (> 0) bytes of `file` from `start`. The caller has checked that the file is at
    /// least `start + len` bytes long.
    pub(crate) fn map(file: &File, start: u64, len: usize) -> io::Result<Window> {
        let page = rustix::param::page_size() as u64;
        let aligned = start - start % page;
        let skip = usize::try_from(start - aligned).map_err(io::Error::other)?;
        let mapped = skip
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad map length"))?;
        #[allow(unsafe_code)]
        // SAFETY: a new mapping chosen by the kernel (null hint), so no existing memory is
        // replaced; read-only and shared, so nothing of ours is written through it. The pages
        // stay valid while the file keeps its length (see the module comment).
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                mapped,
                rustix::mm::ProtFlags::READ,
                rustix::mm::MapFlags::SHARED,
                file,
                aligned,
            )
        }
        .map_err(io::Error::from)?;
        let base = NonNull::new(ptr).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Window { base, mapped, skip })
    }

    /// Requested bytes in the window.
    pub(crate) fn len(&self) -> usize {
        self.mapped - self.skip
    }

    /// Writes up to `max` of the requested bytes from `at` on to `fd` with one `write(2)`; the
    /// bytes written. Errors are the call's (`WouldBlock` included; `EFAULT` if the file was cut
    /// short under the map).
    pub(crate) fn write_to(&self, fd: BorrowedFd<'_>, at: usize, max: usize) -> io::Result<usize> {
        let from = self.skip.saturating_add(at).min(self.mapped);
        let to = from.saturating_add(max).min(self.mapped);
        #[allow(unsafe_code)]
        // SAFETY: `base` points at `mapped` readable bytes for as long as `self` lives (unmapped
        // only in `drop`), `from <= to <= mapped`, and the slice lives only for the one call:
        // user code never reads it (see the module comment), the kernel copies it.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().cast::<u8>().add(from), to - from)
        };
        rustix::io::write(fd, bytes).map_err(io::Error::from)
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        #[allow(unsafe_code)]
        // SAFETY: `base`/`mapped` are exactly what `mmap` returned; no slice from `bytes()`
        // outlives `self`.
        let unmapped = unsafe { rustix::mm::munmap(self.base.as_ptr(), self.mapped) };
        if let Err(e) = unmapped {
            tracing::error!(error = %e, "munmap of an artifact window failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::os::fd::AsFd as _;
    use std::os::unix::net::UnixStream;

    /// Everything `w` writes into a socket pair, in `max`-byte calls.
    fn drain(w: &Window, max: usize) -> io::Result<Vec<u8>> {
        let (a, mut b) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            b.read_to_end(&mut got).map(|_| got)
        });
        let mut at = 0;
        let result = loop {
            if at == w.len() {
                break Ok(());
            }
            match w.write_to(a.as_fd(), at, max) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => at += n,
                Err(e) => break Err(e),
            }
        };
        drop(a);
        let got = reader.join().unwrap()?;
        result.map(|()| got)
    }

    #[test]
    fn windows_write_the_bytes_asked_for_at_any_offset() {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        f.write_all(&data).unwrap();
        for (start, len) in [
            (0, 1),
            (0, 50_000),
            (1, 4095),
            (4095, 2),
            (4096, 10_000),
            (49_999, 1),
        ] {
            let w = Window::map(&f, start as u64, len).unwrap();
            assert_eq!(w.len(), len);
            for max in [1, 1000, 1 << 20] {
                assert_eq!(
                    drain(&w, max).unwrap(),
                    &data[start..start + len],
                    "{start}+{len}/{max}"
                );
            }
        }
    }

    #[test]
    fn an_empty_window_is_refused() {
        let f = tempfile::tempfile().unwrap();
        assert!(Window::map(&f, 0, 0).is_err());
    }

    /// The file cut short after the map: the write fails (or stops short) — and this test
    /// process is still alive, i.e. no `SIGBUS`.
    #[test]
    fn a_file_truncated_under_the_map_fails_the_write_without_a_signal() {
        let page = rustix::param::page_size();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&vec![7u8; 16 * page]).unwrap();
        let w = Window::map(&f, 0, 16 * page).unwrap();
        f.set_len(page as u64).unwrap();
        match drain(&w, 16 * page) {
            Err(e) => assert!(
                e.raw_os_error() == Some(rustix::io::Errno::FAULT.raw_os_error())
                    || e.kind() == io::ErrorKind::WriteZero,
                "{e}"
            ),
            Ok(got) => panic!("{} bytes written from a truncated map", got.len()),
        }
    }
}
