//! Container logs: one file per container run, in the CRI log format that the kubelet's
//! runtimes (containerd, CRI-O) write, so the files read the same as on a node:
//!
//! ```text
//! 2026-11-25T14:17:09.669794202Z stdout F a complete line
//! 2026-11-25T14:17:09.670000001Z stderr P the first 16 KiB of a longer line, or a last line without newline
//! ```
//!
//! `F` ends a line; `P` is a fragment that the next record of the stream continues. The
//! timestamp is when the agent read the bytes from the container's pipe. Files are named
//! `<restartCount>.log`; the runtime keeps the current run's and the previous one's
//! (`previous=true`). There is no rotation: a cell runs one pod for its lifetime.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use k8s_openapi::jiff::Timestamp;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{broadcast, mpsc, watch};

use super::LogStream;

/// The longest line kept as one record; longer lines are split into `P` records.
const MAX_RECORD: usize = 16 * 1024;

/// How far a log file has been written: followers wait on changes of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Records written so far.
    pub records: u64,
    /// Both pipes reached end of file: nothing more will be written.
    pub closed: bool,
}

/// Now, as a timestamp (jiff's own clock needs a feature this workspace does not turn on).
pub fn now() -> Timestamp {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Timestamp::from_nanosecond(since_epoch.as_nanos() as i128)
        .expect("the clock is within jiff's range")
}

/// Output of a running container as attached clients see it: the bytes as read from each
/// pipe, then `Closed` when both pipes are closed.
#[derive(Debug, Clone)]
pub enum Live {
    Stdout(Bytes),
    Stderr(Bytes),
    Closed,
}

/// Copy a container's stdout and stderr into the log file at `path` (created, appended to)
/// until both are closed, and to `live` as read (a receiver that lags loses output, never
/// the log). The returned receiver tells followers what was written.
pub async fn record<O, E>(
    path: &Path,
    stdout: O,
    stderr: E,
    live: broadcast::Sender<Live>,
) -> io::Result<watch::Receiver<Progress>>
where
    O: AsyncRead + Unpin + Send + 'static,
    E: AsyncRead + Unpin + Send + 'static,
{
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await?;
    let (progress_tx, progress_rx) = watch::channel(Progress::default());
    let (records_tx, mut records_rx) = mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(pump(stdout, "stdout", records_tx.clone(), live.clone()));
    tokio::spawn(pump(stderr, "stderr", records_tx, live.clone()));
    let path = path.to_path_buf();
    tokio::spawn(async move {
        while let Some(record) = records_rx.recv().await {
            if let Err(error) = file.write_all(&record).await {
                tracing::warn!(path = %path.display(), %error, "container log write failed; dropping the rest of this run's log");
                break;
            }
            progress_tx.send_modify(|p| p.records += 1);
        }
        // Drain so that the pumps never block on a full channel after a write error.
        while records_rx.recv().await.is_some() {}
        progress_tx.send_modify(|p| p.closed = true);
        let _ = live.send(Live::Closed);
    });
    Ok(progress_rx)
}

/// Split one pipe into records and hand them to the writer.
async fn pump<R: AsyncRead + Unpin>(
    mut pipe: R,
    stream: &'static str,
    records: mpsc::Sender<Vec<u8>>,
    live: broadcast::Sender<Live>,
) {
    let mut pending = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // No receiver (nobody attached) is the usual case, not an error.
        let _ = live.send(match stream {
            "stdout" => Live::Stdout(Bytes::copy_from_slice(&chunk[..n])),
            _ => Live::Stderr(Bytes::copy_from_slice(&chunk[..n])),
        });
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if records
                .send(format_record(stream, 'F', &line[..end]))
                .await
                .is_err()
            {
                return;
            }
        }
        while pending.len() >= MAX_RECORD {
            let fragment: Vec<u8> = pending.drain(..MAX_RECORD).collect();
            if records
                .send(format_record(stream, 'P', &fragment))
                .await
                .is_err()
            {
                return;
            }
        }
    }
    if !pending.is_empty() {
        let _ = records.send(format_record(stream, 'P', &pending)).await;
    }
}

fn format_record(stream: &str, tag: char, content: &[u8]) -> Vec<u8> {
    let mut record = format!("{:.9} {stream} {tag} ", now()).into_bytes();
    record.extend_from_slice(content);
    record.push(b'\n');
    record
}

/// What to read of a log (the kubelet's log options, `previous` already resolved to a file).
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub follow: bool,
    pub tail_lines: Option<u64>,
    pub timestamps: bool,
    pub since: Option<Timestamp>,
    pub limit_bytes: Option<u64>,
}

/// One parsed record.
struct Record<'a> {
    time: &'a str,
    complete: bool,
    content: &'a [u8],
}

fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let _stream = parts.next()?;
    let complete = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    Some(Record {
        time,
        complete,
        content: parts.next().unwrap_or_default(),
    })
}

/// Turns records into the bytes a client sees, with the query's filters.
struct Renderer {
    timestamps: bool,
    since: Option<Timestamp>,
    /// Inside a line whose first fragment was already rendered (no second timestamp).
    continuing: bool,
}

impl Renderer {
    fn render(&mut self, line: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(record) = parse(line) else {
            return false;
        };
        if let Some(since) = self.since
            && record.time.parse::<Timestamp>().is_ok_and(|t| t < since)
        {
            return false;
        }
        if self.timestamps && !self.continuing {
            out.extend_from_slice(record.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(record.content);
        if record.complete {
            out.push(b'\n');
        }
        self.continuing = !record.complete;
        record.complete
    }
}

/// Stream the log at `path` by `query`; with `follow`, until `progress` says the run's pipes
/// closed and everything written was sent.
pub fn read(path: PathBuf, query: Query, progress: watch::Receiver<Progress>) -> LogStream {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(16);
    tokio::spawn(async move {
        if let Err(error) = send_log(&path, &query, progress, &tx).await {
            let _ = tx.send(Err(error)).await;
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

async fn send_log(
    path: &Path,
    query: &Query,
    mut progress: watch::Receiver<Progress>,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> io::Result<()> {
    let file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        // A run that has not written yet: nothing to show so far.
        Err(error) if error.kind() == io::ErrorKind::NotFound && !query.follow => return Ok(()),
        Err(error) => return Err(error),
    };
    let mut reader = BufReader::new(file);
    let mut renderer = Renderer {
        timestamps: query.timestamps,
        since: query.since,
        continuing: false,
    };
    let mut budget = query.limit_bytes.unwrap_or(u64::MAX);

    // What is there now: rendered line by line, only the last `tail_lines` lines kept.
    let mut lines: VecDeque<Vec<u8>> = VecDeque::new();
    let mut current = Vec::new();
    let mut raw = Vec::new();
    loop {
        raw.clear();
        if reader.read_until(b'\n', &mut raw).await? == 0 || !raw.ends_with(b"\n") {
            break;
        }
        if renderer.render(&raw[..raw.len() - 1], &mut current) {
            lines.push_back(std::mem::take(&mut current));
            if query.tail_lines.is_some_and(|n| lines.len() as u64 > n) {
                lines.pop_front();
            }
        }
    }
    // A last line without its end yet is a line too.
    if !current.is_empty() {
        lines.push_back(std::mem::take(&mut current));
        if query.tail_lines.is_some_and(|n| lines.len() as u64 > n) {
            lines.pop_front();
        }
    }
    for line in lines {
        if !send_limited(tx, line, &mut budget).await {
            return Ok(());
        }
    }
    if !query.follow {
        return Ok(());
    }

    // Follow: `raw` may hold the start of a record the writer has not finished.
    let mut partial = std::mem::take(&mut raw);
    loop {
        let closed = progress.borrow_and_update().closed;
        loop {
            let before = partial.len();
            if reader.read_until(b'\n', &mut partial).await? == 0 && partial.len() == before {
                break;
            }
            if partial.ends_with(b"\n") {
                let mut out = Vec::new();
                renderer.render(&partial[..partial.len() - 1], &mut out);
                partial.clear();
                if !out.is_empty() && !send_limited(tx, out, &mut budget).await {
                    return Ok(());
                }
            }
        }
        if closed || progress.changed().await.is_err() {
            return Ok(());
        }
    }
}

/// Send `bytes`, cut to what is left of the byte budget; false once the budget or the
/// receiver is gone.
async fn send_limited(
    tx: &mpsc::Sender<io::Result<Bytes>>,
    mut bytes: Vec<u8>,
    budget: &mut u64,
) -> bool {
    if (bytes.len() as u64) > *budget {
        bytes.truncate(*budget as usize);
    }
    *budget -= bytes.len() as u64;
    !bytes.is_empty() && tx.send(Ok(Bytes::from(bytes))).await.is_ok() && *budget > 0
}

/// The last `lines` lines of a log file, at most `max_bytes` from the end, without
/// timestamps: a termination message taken from the log (`FallbackToLogsOnError`).
pub fn tail_text(path: &Path, lines: usize, max_bytes: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let mut renderer = Renderer {
        timestamps: false,
        since: None,
        continuing: false,
    };
    let mut kept: VecDeque<Vec<u8>> = VecDeque::new();
    let mut current = Vec::new();
    for raw in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if renderer.render(raw, &mut current) {
            kept.push_back(std::mem::take(&mut current));
            if kept.len() > lines {
                kept.pop_front();
            }
        }
    }
    if !current.is_empty() {
        kept.push_back(current);
        if kept.len() > lines {
            kept.pop_front();
        }
    }
    let text: Vec<u8> = kept.into_iter().flatten().collect();
    let start = text.len().saturating_sub(max_bytes);
    String::from_utf8_lossy(&text[start..]).into_owned()
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    async fn collect(stream: LogStream) -> String {
        let chunks: Vec<_> = stream.collect().await;
        let bytes: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        String::from_utf8(bytes).unwrap()
    }

    #[tokio::test]
    async fn records_read_back_with_tail_timestamps_limit_and_follow() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("0.log");
        let (mut out_writer, out_reader) = tokio::io::duplex(64);
        let (err_writer, err_reader) = tokio::io::duplex(64);
        let progress = record(&path, out_reader, err_reader, broadcast::channel(1).0)
            .await
            .unwrap();
        drop(err_writer);

        out_writer.write_all(b"one\ntwo\nthr").await.unwrap();
        let follower = read(
            path.clone(),
            Query {
                follow: true,
                ..Default::default()
            },
            progress.clone(),
        );
        out_writer.write_all(b"ee\nno newline").await.unwrap();
        drop(out_writer);
        assert_eq!(collect(follower).await, "one\ntwo\nthree\nno newline");

        let file = std::fs::read_to_string(&path).unwrap();
        let first = file.lines().next().unwrap();
        assert!(first.ends_with(" stdout F one"), "{first}");
        assert!(
            first
                .split(' ')
                .next()
                .unwrap()
                .parse::<Timestamp>()
                .is_ok(),
            "{first}"
        );

        let tail = Query {
            tail_lines: Some(2),
            ..Default::default()
        };
        assert_eq!(
            collect(read(path.clone(), tail, progress.clone())).await,
            "three\nno newline"
        );
        let stamped = collect(read(
            path.clone(),
            Query {
                timestamps: true,
                ..Default::default()
            },
            progress.clone(),
        ))
        .await;
        assert!(
            stamped
                .lines()
                .all(|l| l.split(' ').next().unwrap().parse::<Timestamp>().is_ok()),
            "{stamped}"
        );
        let limited = Query {
            limit_bytes: Some(5),
            ..Default::default()
        };
        assert_eq!(
            collect(read(path.clone(), limited, progress.clone())).await,
            "one\nt"
        );
        let future = Query {
            since: Some(now() + std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        assert_eq!(collect(read(path.clone(), future, progress)).await, "");
        assert_eq!(tail_text(&path, 1, 100), "no newline");
    }
}
