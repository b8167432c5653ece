//! The daemon side of the control socket.

use std::{
    fs, io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use super::protocol::{ErrorKind, Request, Response, WatchEvent};
use crate::watch::Signal;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("control socket {path} is served by another slammer daemon")]
    InUse { path: PathBuf },
    #[error("cannot create control socket {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Answers one request.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

/// Starts following the blocklist: a snapshot, and the changes after it (taken atomically).
pub type WatchStart =
    Arc<dyn Fn() -> (WatchEvent, tokio::sync::broadcast::Receiver<Signal>) + Send + Sync>;

/// A bound control socket; the file is removed when this is dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds `path` with mode 0600, replacing a stale socket file but never a live one.
    pub fn bind(path: &Path) -> Result<Self, ServeError> {
        let io_err = |source| ServeError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse {
                    path: path.to_owned(),
                });
            }
            fs::remove_file(path).map_err(io_err)?;
        }
        let listener = UnixListener::bind(path).map_err(io_err)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }

    /// Serves connections until the task is dropped.
    pub async fn serve(&self, handler: Handler, watch: WatchStart) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(connection(stream, Arc::clone(&handler), Arc::clone(&watch)));
                }
                Err(err) => {
                    log::warn!(
                        "control socket {}: accept failed: {err}",
                        self.path.display()
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

async fn connection(stream: UnixStream, handler: Handler, watch: WatchStart) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return,
            Err(err) => {
                log::debug!("control connection closed: {err}");
                return;
            }
        };
        // Handlers take a lock and make map syscalls, and a request or an answer can be large
        // (a bulk block, a list of a million blocks: parsing or writing it takes a while): all of
        // it stays off the async workers, which also serve the events.
        let handler = Arc::clone(&handler);
        let answer = tokio::task::spawn_blocking(move || {
            let response = match serde_json::from_str::<Request>(&line) {
                Ok(Request::Watch) => return None,
                Ok(request) => handler(request),
                Err(err) => Response::error(ErrorKind::BadRequest, format!("bad request: {err}")),
            };
            Some(encode(&response))
        })
        .await
        .unwrap_or_else(|e| Some(encode(&Response::error(ErrorKind::Internal, e))));
        let Some(answer) = answer else {
            follow(lines, write, watch).await;
            return;
        };
        if write.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// One line of JSON.
fn encode(value: &impl serde::Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec(value).expect("plain data always serialises");
    out.push(b'\n');
    out
}

/// Serves a `watch` request until the follower hangs up: `ok`, a snapshot, then each change;
/// a follower that fell behind gets a fresh snapshot instead of the changes it missed.
async fn follow(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    mut write: tokio::net::unix::OwnedWriteHalf,
    watch: WatchStart,
) {
    use tokio::sync::broadcast::error::RecvError;

    let start = || {
        let watch = Arc::clone(&watch);
        // Snapshots of large blocklists take a while under the daemon's lock.
        tokio::task::spawn_blocking(move || watch())
    };
    let Ok((mut snapshot, mut changes)) = start().await else {
        return;
    };
    if send(&mut write, &Response::ok(None)).await.is_err() {
        return;
    }
    loop {
        if send(&mut write, &snapshot).await.is_err() {
            return;
        }
        loop {
            let next = tokio::select! {
                next = changes.recv() => next,
                // Anything the follower sends, or its hang-up, ends the stream.
                _ = lines.next_line() => return,
            };
            match next {
                Ok(Signal::Event(event)) => {
                    if send(&mut write, &event).await.is_err() {
                        return;
                    }
                }
                Ok(Signal::Resync) | Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => return,
            }
        }
        match start().await {
            Ok((s, c)) => (snapshot, changes) = (s, c),
            Err(_) => return,
        }
    }
}

async fn send(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    value: &impl serde::Serialize,
) -> io::Result<()> {
    write.write_all(&encode(value)).await
}
