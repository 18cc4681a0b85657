//! Durable writes of large uploads that bypass the page cache.
//!
//! Copying data into the page cache with `write(2)` is the slow part of a buffered write on
//! these machines (about 250 MiB/s, against 1.3 GiB/s for the same file written with
//! `O_DIRECT`, which is what `cp`'s in-kernel `copy_file_range` achieves). So a spooled upload
//! on the local backend is gathered into page-aligned buffers, which a writer thread of its own
//! writes with `O_DIRECT` while the next buffer fills; the unaligned tail goes through the page
//! cache, then the file is fsynced. File systems that refuse `O_DIRECT` (tmpfs at open, some
//! others at the first write) get the same code on a buffered descriptor.

use std::io;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

/// The alignment `O_DIRECT` needs of buffers, lengths and offsets.
const ALIGN: usize = 4096;
/// The size of each buffer; three are in use per upload at most.
const BUFFER: usize = 2 * 1024 * 1024;

/// A page-aligned window of a heap buffer (aligned by offset, not by allocator: no unsafe).
struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    /// A buffer of `len` bytes (a multiple of [`ALIGN`]).
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        Self { raw, start, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// What the writer thread is handed.
enum Piece {
    /// A full buffer, more to come.
    Full(Aligned),
    /// The last buffer and how much of it is filled.
    Last(Aligned, usize),
}

/// A file being written by a thread of its own, in aligned buffers.
pub(crate) struct DirectWriter {
    full: Option<SyncSender<Piece>>,
    free: Receiver<Aligned>,
    current: Option<Aligned>,
    filled: usize,
    /// Buffers made so far: more are made only while fewer than three are, and only when the
    /// writer has none to give back, so a small upload holds one small buffer.
    made: usize,
    writer: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl DirectWriter {
    /// Starts writing `path` (which exists and is empty); `expected` is the size announced, if
    /// any, which sizes the first buffer.
    pub(crate) fn open(path: &Path, expected: Option<u64>) -> io::Result<Self> {
        let file = match std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path) {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => std::fs::OpenOptions::new().write(true).open(path)?,
            Err(e) => return Err(e),
        };
        let (full_tx, full_rx) = sync_channel::<Piece>(1);
        let (free_tx, free_rx) = sync_channel::<Aligned>(2);
        let path = path.to_path_buf();
        let writer = std::thread::Builder::new()
            .name("cloudx-spool".into())
            .spawn(move || write_buffers(file, &path, &full_rx, &free_tx))?;
        let first = match expected {
            Some(n) if n < BUFFER as u64 => (usize::try_from(n).unwrap_or(BUFFER) / ALIGN + 1) * ALIGN,
            _ => BUFFER,
        };
        Ok(Self {
            full: Some(full_tx),
            free: free_rx,
            current: Some(Aligned::new(first)),
            filled: 0,
            made: 1,
            writer: Some(writer),
        })
    }

    /// Appends `data`.
    pub(crate) fn write(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let current = self.current.as_mut().expect("a buffer between writes");
            let capacity = current.len;
            let n = data.len().min(capacity - self.filled);
            current.bytes_mut()[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == capacity {
                let full = self.current.take().expect("a buffer between writes");
                self.send(Piece::Full(full))?;
                let next = match self.free.try_recv() {
                    Ok(buffer) if buffer.len == BUFFER => buffer,
                    _ if self.made < 3 => {
                        self.made += 1;
                        Aligned::new(BUFFER)
                    }
                    _ => self.free.recv().map_err(|_| self.writer_failed())?,
                };
                self.current = Some(next);
                self.filled = 0;
            }
        }
        Ok(())
    }

    /// Writes what is left, fsyncs, and reports the first error of the writer thread.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        let last = self.current.take().expect("a buffer between writes");
        let sent = self.send(Piece::Last(last, self.filled));
        drop(self.full.take());
        let joined = self
            .writer
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| io::Error::other("the writer thread panicked"))?;
        joined.and(sent)
    }

    fn send(&mut self, piece: Piece) -> io::Result<()> {
        let full = self.full.as_ref().expect("open until finished");
        full.send(piece).map_err(|_| self.writer_failed())
    }

    /// The writer thread stopped early: its error is what `finish` reports.
    fn writer_failed(&self) -> io::Error {
        io::Error::other("the writer thread stopped")
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        drop(self.full.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// The writer thread: each full buffer at the next offset, then the last one (aligned part
/// direct, tail buffered), then fsync.
fn write_buffers(
    mut file: std::fs::File,
    path: &PathBuf,
    full: &Receiver<Piece>,
    free: &SyncSender<Aligned>,
) -> io::Result<()> {
    let mut offset = 0u64;
    // Some file systems accept `O_DIRECT` at open and refuse the writes: then the rest of the
    // file goes through the page cache.
    let write_at = |file: &mut std::fs::File, data: &[u8], at: u64| match file.write_all_at(data, at) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            *file = std::fs::OpenOptions::new().write(true).open(path)?;
            file.write_all_at(data, at)
        }
        other => other,
    };
    while let Ok(piece) = full.recv() {
        let (buffer, len) = match piece {
            Piece::Full(buffer) => {
                write_at(&mut file, buffer.bytes(), offset)?;
                offset += buffer.len as u64;
                let _ = free.try_send(buffer);
                continue;
            }
            Piece::Last(buffer, len) => (buffer, len),
        };
        let aligned = len / ALIGN * ALIGN;
        if aligned > 0 {
            write_at(&mut file, &buffer.bytes()[..aligned], offset)?;
        }
        if len > aligned {
            let tail = std::fs::OpenOptions::new().write(true).open(path)?;
            tail.write_all_at(&buffer.bytes()[aligned..len], offset + aligned as u64)?;
        }
        return file.sync_all();
    }
    // Dropped without `finish`: the upload was abandoned; its file is removed by the caller.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_byte_in_order_whatever_the_sizes() {
        let dir = tempfile::tempdir().unwrap();
        for (total, hint) in [
            (0, None),
            (1, Some(1)),
            (ALIGN - 1, None),
            (ALIGN, Some(ALIGN as u64)),
            (BUFFER - 1, Some(BUFFER as u64 - 1)),
            (BUFFER, None),
            (BUFFER + 1, Some(10)),
            (7 * BUFFER + 12345, None),
        ] {
            let path = dir.path().join(format!("f{total}"));
            std::fs::File::create(&path).unwrap();
            let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            let mut writer = DirectWriter::open(&path, hint).unwrap();
            for piece in data.chunks(16 * 1024 + 7) {
                writer.write(piece).unwrap();
            }
            writer.finish().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data, "{total} bytes");
        }
    }
}
