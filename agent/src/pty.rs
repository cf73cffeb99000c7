//! The agent's side of a terminal: a pty whose slave `runc` gets as its stdio.
//!
//! Without detaching, runc makes the terminal inside the container (the process's
//! controlling terminal) and relays it to and from its own stdin and stdout; when those are
//! a terminal, runc puts it in raw mode and, on SIGWINCH, copies its size to the
//! container's terminal. So runc gets the slave of a pty made here, and the agent reads and
//! writes the master; a resize sets the master's size and signals runc. Both users work
//! this way: `runc exec --tty` for `kubectl exec -it` ([`crate::streams::exec`]) and
//! `runc run` of a container with `tty: true` (`runtime::console`). (runc's
//! `--console-socket`, which hands over the container terminal's master directly, is only
//! allowed with `--detach`, which would leave the process without a parent to report its
//! exit code.)
//!
//! The master is used non-blocking through tokio's reactor, so dropping its last reader
//! and writer closes it at once and the terminal hangs up.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::unix::pipe;

/// A new pty: its master and its slave.
pub fn open() -> io::Result<(OwnedFd, OwnedFd)> {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok((master, slave))
}

/// The reading side of a pty master: the output of the session's process.
///
/// tokio's pipe adapters drive the descriptor: they only read, write and wait for
/// readiness on it, which a pty master supports as a pipe does (tokio's generic `AsyncFd`
/// constructor is unsafe since 1.54).
#[derive(Debug)]
pub struct PtyReader(pipe::Receiver);

/// The writing side of a pty master: the process's input.
#[derive(Debug)]
pub struct PtyWriter(pipe::Sender);

/// Split a pty master into its reader, writer, and a plain descriptor for [`resize`].
pub fn split(master: OwnedFd) -> io::Result<(PtyReader, PtyWriter, OwnedFd)> {
    rustix::io::ioctl_fionbio(&master, true)?;
    let writer = pipe::Sender::from_owned_fd_unchecked(master.try_clone()?)?;
    let size = master.try_clone()?;
    let reader = pipe::Receiver::from_owned_fd_unchecked(master)?;
    Ok((PtyReader(reader), PtyWriter(writer), size))
}

/// Set the terminal's size (its user must then be told: SIGWINCH).
pub fn resize(fd: &OwnedFd, columns: u16, rows: u16) -> io::Result<()> {
    let size = Winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    Ok(tcsetwinsize(fd, size)?)
}

impl AsyncRead for PtyReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.0).poll_read(cx, buf)) {
            // EIO: every process holding the terminal's other side has gone; for the
            // reader that is the end of the output.
            Err(error) if error.raw_os_error() == Some(Errno::IO.raw_os_error()) => {
                Poll::Ready(Ok(()))
            }
            other => Poll::Ready(other),
        }
    }
}

impl AsyncWrite for PtyWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// A terminal's input has no end of file short of hanging up, which closing the
    /// reader does: nothing to do.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_pty_carries_bytes_and_ends_when_the_slave_closes() {
        let (master, slave) = open().unwrap();
        let (mut reader, mut writer, size) = split(master).unwrap();
        resize(&size, 100, 30).unwrap();
        assert_eq!(
            rustix::termios::tcgetwinsize(&slave).unwrap().ws_col,
            100,
            "the slave sees the size set on the master"
        );
        // Raw mode, so the line discipline neither echoes nor waits for a newline.
        let mut termios = rustix::termios::tcgetattr(&slave).unwrap();
        termios.make_raw();
        rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &termios)
            .unwrap();
        writer.write_all(b"typed").await.unwrap();
        let mut typed = [0u8; 5];
        rustix::io::read(&slave, &mut typed).unwrap();
        assert_eq!(&typed, b"typed");
        rustix::io::write(&slave, b"printed").unwrap();
        drop(slave);
        let mut output = Vec::new();
        reader.read_to_end(&mut output).await.unwrap();
        assert_eq!(output, b"printed");
    }
}
