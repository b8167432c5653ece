//! The CLI side of the control socket: one request, one response, blocking.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::value::RawValue;

use super::protocol::{ErrorKind, Request, Response};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the slammer daemon at {path}; is `slammer run` running?")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the slammer daemon at {path} did not answer")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the slammer daemon at {path} sent an unreadable answer")]
    Protocol {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Sends `request` to the daemon at `socket` and returns its answer.
pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let answer = call_raw(socket, request)?;
    serde_json::from_slice(&answer).map_err(|source| ClientError::Protocol {
        path: socket.to_owned(),
        source,
    })
}

/// Sends `request` and returns the answer line unparsed, for answers too large to go through a
/// [`Response`] (`list` of a million blocks): see [`parse_raw`].
pub fn call_raw(socket: &Path, request: &Request) -> Result<Vec<u8>, ClientError> {
    let io = |source| ClientError::Io {
        path: socket.to_owned(),
        source,
    };
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Unreachable {
        path: socket.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(request).expect("requests always serialise");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut answer = Vec::new();
    BufReader::with_capacity(1 << 20, &stream)
        .read_until(b'\n', &mut answer)
        .map_err(io)?;
    if answer.is_empty() {
        return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(answer)
}

/// An answer whose result stays JSON text, borrowed from the answer line.
#[derive(Debug, serde::Deserialize)]
pub struct RawResponse<'a> {
    pub ok: bool,
    #[serde(default)]
    pub kind: Option<ErrorKind>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default, borrow)]
    pub result: Option<&'a RawValue>,
}

/// Parses an answer from [`call_raw`] without building its result.
pub fn parse_raw<'a>(socket: &Path, answer: &'a [u8]) -> Result<RawResponse<'a>, ClientError> {
    serde_json::from_slice(answer).map_err(|source| ClientError::Protocol {
        path: socket.to_owned(),
        source,
    })
}
