//! The blocking client side of `watch`: the daemon's blocklist changes as they happen.

use std::{
    io::{BufRead, BufReader, Lines, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
};

use super::{
    client::ClientError,
    protocol::{Request, Response, WatchEvent},
};

/// A `watch` stream: yields events until the daemon goes away.
pub struct Follower {
    lines: Lines<BufReader<UnixStream>>,
    path: PathBuf,
}

impl Follower {
    /// Connects to the daemon at `socket` and asks to follow; `Ok` once the daemon agreed.
    pub fn connect(socket: &Path) -> Result<Self, ClientError> {
        let path = socket.to_owned();
        let stream = UnixStream::connect(socket).map_err(|source| ClientError::Unreachable {
            path: path.clone(),
            source,
        })?;
        let mut request = serde_json::to_string(&Request::Watch).expect("requests serialise");
        request.push('\n');
        (&stream)
            .write_all(request.as_bytes())
            .map_err(|source| ClientError::Io {
                path: path.clone(),
                source,
            })?;
        let mut follower = Self {
            lines: BufReader::new(stream).lines(),
            path,
        };
        let response: Response = follower.read()?;
        if !response.ok {
            let refused = std::io::Error::other(response.error.unwrap_or_default());
            return Err(ClientError::Io {
                path: follower.path,
                source: refused,
            });
        }
        Ok(follower)
    }

    /// The next event; `Err` when the daemon hung up or sent something unreadable.
    pub fn next_event(&mut self) -> Result<WatchEvent, ClientError> {
        self.read()
    }

    fn read<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, ClientError> {
        let line = match self.lines.next() {
            Some(Ok(line)) => line,
            Some(Err(source)) => {
                return Err(ClientError::Io {
                    path: self.path.clone(),
                    source,
                });
            }
            None => {
                return Err(ClientError::Io {
                    path: self.path.clone(),
                    source: std::io::ErrorKind::UnexpectedEof.into(),
                });
            }
        };
        serde_json::from_str(&line).map_err(|source| ClientError::Protocol {
            path: self.path.clone(),
            source,
        })
    }
}
