//! A bounded on-disk queue of alert lines for an HTTP sink: the sink thread
//! appends, the delivery thread reads from the cursor and moves it on once
//! the receiver took a batch. Alerts wait here while the receiver is down
//! and across monitor restarts (the cursor is a file), so a receiver that
//! comes back gets them all, in order.
//!
//! Layout of the spool directory: `seg-<n>.jsonl` segments (one alert line
//! each line, at most `SEGMENT_BYTES` before the next segment starts) and
//! `cursor` (`<segment> <byte offset>` of the first line not delivered yet,
//! replaced atomically). Delivered segments are deleted.
use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

/// A new segment starts once the current one is this big.
const SEGMENT_BYTES: u64 = 1 << 20;

/// A position in the spool: segment number and byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// First line not delivered yet.
    cursor: Position,
    /// The segment appended to, and its size.
    head: Position,
    /// Bytes between cursor and head (what the size limit applies to).
    queued: u64,
    /// Lines (alerts) between cursor and head.
    queued_lines: u64,
}

/// Lines read from the cursor on, and where the next read starts.
pub struct Peeked {
    pub lines: Vec<String>,
    pub next: Position,
}

impl Spool {
    /// Opens (creating it) the spool in `dir`, resuming at its cursor.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut segments = segments(dir)?;
        segments.sort_unstable();
        if let Some(&last) = segments.last() {
            drop_torn_tail(&segment_path(dir, last))?;
        }
        let mut cursor = read_cursor(dir)?.unwrap_or(Position {
            segment: segments.first().copied().unwrap_or(0),
            offset: 0,
        });
        // A cursor into a segment that is gone or shorter (removed by hand)
        // would skip lines of a new one: start that segment over.
        let cursor_len = fs::metadata(segment_path(dir, cursor.segment)).map_or(0, |m| m.len());
        if cursor.offset > cursor_len {
            cursor.offset = 0;
        }
        let mut queued = 0;
        let mut head = cursor;
        for &n in segments.iter().filter(|&&n| n >= cursor.segment) {
            let len = fs::metadata(segment_path(dir, n))?.len();
            queued += len;
            head = Position {
                segment: n,
                offset: len,
            };
        }
        queued = queued.saturating_sub(cursor.offset);
        let queued_lines = count_lines(dir, cursor, head)?;
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            cursor,
            head,
            queued,
            queued_lines,
        })
    }

    /// Bytes waiting for delivery.
    pub fn queued_bytes(&self) -> u64 {
        self.queued
    }

    /// Alerts waiting for delivery.
    pub fn queued_lines(&self) -> u64 {
        self.queued_lines
    }

    /// Appends lines (without `\n`) in order, as many as fit in the size
    /// limit; returns how many did not fit (the caller counts them dropped).
    pub fn push(&mut self, lines: &[String]) -> io::Result<usize> {
        let mut buf = Vec::new();
        let mut kept = 0;
        for line in lines {
            let len = line.len() as u64 + 1;
            if self.queued + buf.len() as u64 + len > self.max_bytes {
                break;
            }
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            kept += 1;
        }
        if buf.is_empty() {
            return Ok(lines.len());
        }
        if self.head.offset >= SEGMENT_BYTES {
            self.head = Position {
                segment: self.head.segment + 1,
                offset: 0,
            };
        }
        let path = segment_path(&self.dir, self.head.segment);
        let mut file = OpenOptions::new().append(true).create(true).open(&path)?;
        if let Err(e) = file.write_all(&buf) {
            // Cut a partial write off again: the spool holds whole lines only.
            let _ = file.set_len(self.head.offset);
            return Err(e);
        }
        self.head.offset += buf.len() as u64;
        self.queued += buf.len() as u64;
        self.queued_lines += kept as u64;
        Ok(lines.len() - kept)
    }

    /// Up to `max` lines from the cursor on, without consuming them.
    pub fn peek(&self, max: usize) -> io::Result<Peeked> {
        let mut lines = Vec::new();
        let mut at = self.cursor;
        while lines.len() < max && at < self.head {
            let path = segment_path(&self.dir, at.segment);
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound && at.segment < self.head.segment => {
                    at = next_segment(at);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut reader = BufReader::new(file);
            reader.seek(SeekFrom::Start(at.offset))?;
            let mut line = String::new();
            while lines.len() < max {
                line.clear();
                let n = reader.read_line(&mut line)?;
                if n == 0 || !line.ends_with('\n') {
                    break;
                }
                at.offset += n as u64;
                line.pop();
                lines.push(line.clone());
            }
            if lines.len() < max && at.segment < self.head.segment {
                at = next_segment(at);
            } else {
                break;
            }
        }
        Ok(Peeked { lines, next: at })
    }

    /// The `lines` lines before `next` were delivered: move the cursor
    /// (durably) and delete the segments behind it.
    pub fn commit(&mut self, next: Position, lines: usize) -> io::Result<()> {
        let tmp = self.dir.join("cursor.tmp");
        fs::write(&tmp, format!("{} {}\n", next.segment, next.offset))?;
        fs::rename(&tmp, self.dir.join("cursor"))?;
        let delivered = self.distance(self.cursor, next)?;
        for n in self.cursor.segment..next.segment {
            let _ = fs::remove_file(segment_path(&self.dir, n));
        }
        self.queued = self.queued.saturating_sub(delivered);
        self.queued_lines = self.queued_lines.saturating_sub(lines as u64);
        self.cursor = next;
        Ok(())
    }

    /// Bytes from `from` to `to` (segments between them were full).
    fn distance(&self, from: Position, to: Position) -> io::Result<u64> {
        if from.segment == to.segment {
            return Ok(to.offset.saturating_sub(from.offset));
        }
        let mut bytes = 0;
        for n in from.segment..to.segment {
            let len = fs::metadata(segment_path(&self.dir, n)).map_or(0, |m| m.len());
            bytes += len;
        }
        Ok((bytes + to.offset).saturating_sub(from.offset))
    }
}

/// Lines from `from` to `to` (at start: what an earlier run left).
fn count_lines(dir: &Path, from: Position, to: Position) -> io::Result<u64> {
    let mut n = 0;
    for segment in from.segment..=to.segment {
        let Ok(bytes) = fs::read(segment_path(dir, segment)) else {
            continue;
        };
        let start = if segment == from.segment {
            from.offset as usize
        } else {
            0
        };
        n += bytes
            .get(start..)
            .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count() as u64);
    }
    Ok(n)
}

/// Cuts a line the previous run did not finish (killed mid-write) off the
/// newest segment, so the next line does not glue itself to it.
fn drop_torn_tail(path: &Path) -> io::Result<()> {
    let bytes = fs::read(path)?;
    let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if whole < bytes.len() {
        log::warn!(
            "{}: dropping {} bytes of an alert line cut off by an earlier stop",
            path.display(),
            bytes.len() - whole
        );
        OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(whole as u64)?;
    }
    Ok(())
}

fn next_segment(at: Position) -> Position {
    Position {
        segment: at.segment + 1,
        offset: 0,
    }
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("seg-{n:016}.jsonl"))
}

fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix("seg-")
            .and_then(|s| s.strip_suffix(".jsonl"))
            .and_then(|s| s.parse().ok())
        {
            out.push(n);
        }
    }
    Ok(out)
}

fn read_cursor(dir: &Path) -> io::Result<Option<Position>> {
    let text = match fs::read_to_string(dir.join("cursor")) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Ok(Some(Position { segment, offset })),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: not `<segment> <offset>`", dir.join("cursor").display()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("{{\"n\":{i}}}")).collect()
    }

    #[test]
    fn lines_come_back_in_order_across_reopen_and_commits() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(spool.push(&lines(0..10)).unwrap(), 0);
        let first = spool.peek(4).unwrap();
        assert_eq!(first.lines, lines(0..4));
        spool.commit(first.next, first.lines.len()).unwrap();
        // Not committed: comes again after a restart.
        assert_eq!(spool.peek(2).unwrap().lines, lines(4..6));
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(spool.queued_lines(), 6);
        spool.push(&lines(10..12)).unwrap();
        let rest = spool.peek(100).unwrap();
        assert_eq!(rest.lines, lines(4..12));
        spool.commit(rest.next, rest.lines.len()).unwrap();
        assert_eq!(spool.queued_lines(), 0);
        assert_eq!(spool.queued_bytes(), 0);
        assert!(spool.peek(10).unwrap().lines.is_empty());
    }

    #[test]
    fn segments_roll_over_and_are_deleted_once_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 30).unwrap();
        let big: Vec<String> = (0..3000).map(|i| format!("{i:0>1000}")).collect();
        for chunk in big.chunks(100) {
            spool.push(chunk).unwrap();
        }
        assert!(segments(dir.path()).unwrap().len() >= 2);
        let mut got = Vec::new();
        loop {
            let p = spool.peek(700).unwrap();
            if p.lines.is_empty() {
                break;
            }
            spool.commit(p.next, p.lines.len()).unwrap();
            got.extend(p.lines);
        }
        assert_eq!(got, big);
        assert_eq!(spool.queued_bytes(), 0);
        assert!(segments(dir.path()).unwrap().len() <= 1);
    }

    #[test]
    fn a_full_spool_keeps_what_fits_and_reports_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let line_bytes = lines(0..1)[0].len() as u64 + 1;
        let mut spool = Spool::open(dir.path(), line_bytes * 5).unwrap();
        assert_eq!(spool.push(&lines(0..3)).unwrap(), 0);
        assert_eq!(spool.push(&lines(3..9)).unwrap(), 4);
        assert_eq!(spool.peek(100).unwrap().lines, lines(0..5));
    }

    #[test]
    fn a_torn_last_line_is_cut_off_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 30).unwrap();
        spool.push(&lines(0..2)).unwrap();
        drop(spool);
        let seg = segment_path(dir.path(), 0);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"{\"torn\":").unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 30).unwrap();
        spool.push(&lines(2..3)).unwrap();
        assert_eq!(spool.peek(10).unwrap().lines, lines(0..3));
    }
}
