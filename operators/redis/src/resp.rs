//! A small Redis client: RESP2 over any byte stream, so the same code talks to a pod through
//! its DNS name, through the API server's port-forward, or to a local process in tests.
//!
//! Only what the operator needs: commands with string arguments, replies parsed into
//! [`Value`], and Pub/Sub messages for the Sentinel event stream.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// How long one command may take before the node is treated as unreachable.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest reply line accepted (status, error, integer and length lines are short).
pub const MAX_LINE: usize = 64 * 1024;
/// The largest bulk string accepted: `INFO` and Sentinel replies are kilobytes.
pub const MAX_BULK: usize = 16 * 1024 * 1024;
/// The most elements accepted in one array.
pub const MAX_ARRAY: usize = 1024 * 1024;
/// The deepest nesting of arrays accepted (Sentinel replies nest two levels).
pub const MAX_DEPTH: usize = 8;

/// A bidirectional byte stream to a Redis or Sentinel process.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Errors of talking to Redis.
#[derive(Debug, thiserror::Error)]
pub enum RespError {
    /// The connection failed or broke.
    #[error("failed to talk to redis: {0}")]
    Io(#[from] std::io::Error),
    /// The peer did not answer in time.
    #[error("failed to get an answer from redis within {COMMAND_TIMEOUT:?}")]
    Timeout,
    /// The peer sent something that is not RESP.
    #[error("failed to parse the reply from redis: {0:?}")]
    Protocol(String),
    /// The server answered with an error reply.
    #[error("redis refused {command:?}: {message}")]
    Server {
        /// The command's name (never its arguments, which may hold a password).
        command: String,
        /// The error reply.
        message: String,
    },
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A null bulk string or null array.
    Nil,
    /// A simple string, such as `OK` or `PONG`.
    Status(String),
    /// An error reply.
    Error(String),
    /// An integer reply.
    Integer(i64),
    /// A bulk string.
    Bulk(Vec<u8>),
    /// An array.
    Array(Vec<Value>),
}

impl Value {
    /// The value as text, for status and bulk replies.
    pub fn text(&self) -> Option<String> {
        match self {
            Value::Status(text) => Some(text.clone()),
            Value::Bulk(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            _ => None,
        }
    }

    /// The elements, for arrays; empty otherwise.
    pub fn items(&self) -> &[Value] {
        match self {
            Value::Array(items) => items,
            _ => &[],
        }
    }
}

/// One connection to a Redis or Sentinel process.
pub struct Connection {
    stream: BufReader<Box<dyn Stream>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Connection")
    }
}

/// Whether an `AUTH` error says the server has no password configured (Redis 6 and later:
/// "ERR AUTH <password> called without any password configured for the default user").
fn is_without_password(message: &str) -> bool {
    message.contains("without any password configured")
}

impl Connection {
    /// Wraps a stream, authenticating with `password` when one is set. A server that has no
    /// password at all (a sentinel started before sentinels asked for one, during an upgrade)
    /// is used as it is, as redis-cli does: it has nothing to protect.
    pub async fn open(stream: Box<dyn Stream>, password: Option<&str>) -> Result<Self, RespError> {
        let mut connection = Self {
            stream: BufReader::new(stream),
        };
        if let Some(password) = password {
            match connection.command(&["AUTH", password]).await {
                Ok(_) => {}
                Err(RespError::Server { message, .. }) if is_without_password(&message) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(connection)
    }

    /// Sends a command and reads its reply; an error reply becomes [`RespError::Server`].
    pub async fn command(&mut self, args: &[&str]) -> Result<Value, RespError> {
        tokio::time::timeout(COMMAND_TIMEOUT, self.command_without_timeout(args))
            .await
            .map_err(|_| RespError::Timeout)?
    }

    async fn command_without_timeout(&mut self, args: &[&str]) -> Result<Value, RespError> {
        self.send(args).await?;
        match self.read().await? {
            Value::Error(message) => Err(RespError::Server {
                command: args.first().copied().unwrap_or_default().to_owned(),
                message,
            }),
            value => Ok(value),
        }
    }

    /// Writes a command without waiting for a reply (for Pub/Sub).
    pub async fn send(&mut self, args: &[&str]) -> Result<(), RespError> {
        let stream = self.stream.get_mut();
        stream.write_all(&encode(args)).await?;
        stream.flush().await?;
        Ok(())
    }

    /// Reads the next reply or pushed message, waiting as long as it takes.
    pub async fn read(&mut self) -> Result<Value, RespError> {
        self.read_nested(0).await
    }

    /// Reads one value at nesting `depth`. Nothing from the wire is trusted: a line, a bulk
    /// string, an array and the nesting are bounded ([`MAX_LINE`], [`MAX_BULK`],
    /// [`MAX_ARRAY`], [`MAX_DEPTH`]), so a pod that answers garbage costs an error, not the
    /// operator's memory.
    fn read_nested(
        &mut self,
        depth: usize,
    ) -> Pin<Box<dyn Future<Output = Result<Value, RespError>> + Send + '_>> {
        Box::pin(async move {
            let mut bytes = Vec::new();
            let read = (&mut self.stream)
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut bytes)
                .await?;
            if read == 0 {
                return Err(RespError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            if bytes.last() != Some(&b'\n') {
                return Err(RespError::Protocol(format!(
                    "a reply line longer than {MAX_LINE} bytes"
                )));
            }
            let line = String::from_utf8_lossy(&bytes);
            let line = line.trim_end_matches(['\r', '\n']);
            let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
            let protocol = || RespError::Protocol(line.chars().take(64).collect());
            let number = || rest.parse::<i64>().map_err(|_| protocol());
            match kind {
                "+" => Ok(Value::Status(rest.to_owned())),
                "-" => Ok(Value::Error(rest.to_owned())),
                ":" => Ok(Value::Integer(number()?)),
                "$" => {
                    let Ok(length) = usize::try_from(number()?) else {
                        return Ok(Value::Nil);
                    };
                    if length > MAX_BULK {
                        return Err(RespError::Protocol(format!(
                            "a bulk string of {length} bytes, more than {MAX_BULK}"
                        )));
                    }
                    let mut bytes = vec![0; length + 2];
                    self.stream.read_exact(&mut bytes).await?;
                    bytes.truncate(length);
                    Ok(Value::Bulk(bytes))
                }
                "*" => {
                    let Ok(length) = usize::try_from(number()?) else {
                        return Ok(Value::Nil);
                    };
                    if length > MAX_ARRAY || depth >= MAX_DEPTH {
                        return Err(RespError::Protocol(format!(
                            "an array of {length} elements at depth {depth} (limits \
                             {MAX_ARRAY} and {MAX_DEPTH})"
                        )));
                    }
                    let mut items = Vec::with_capacity(length.min(1024));
                    for _ in 0..length {
                        items.push(self.read_nested(depth + 1).await?);
                    }
                    Ok(Value::Array(items))
                }
                _ => Err(protocol()),
            }
        })
    }
}

/// A command as a RESP array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut bytes = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        bytes.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        bytes.extend_from_slice(arg.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(wire: &'static [u8]) -> Result<Value, RespError> {
        let (client, mut server) = tokio::io::duplex(1024);
        server.write_all(wire).await.unwrap();
        let mut connection = Connection::open(Box::new(client), None).await.unwrap();
        connection.read().await
    }

    #[tokio::test]
    async fn a_server_without_a_password_is_used_a_wrong_password_is_not() {
        let (client, mut server) = tokio::io::duplex(1024);
        server
            .write_all(b"-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n+PONG\r\n")
            .await
            .unwrap();
        let mut connection = Connection::open(Box::new(client), Some("secret"))
            .await
            .unwrap();
        assert_eq!(
            connection.read().await.unwrap(),
            Value::Status("PONG".into())
        );

        let (client, mut server) = tokio::io::duplex(1024);
        server
            .write_all(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
            .await
            .unwrap();
        let error = Connection::open(Box::new(client), Some("secret"))
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains("WRONGPASS"), "{error}");
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            encode(&["SET", "key", "a b"]),
            b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$3\r\na b\r\n".to_vec()
        );
    }

    #[tokio::test]
    async fn replies_of_every_type_parse() {
        assert_eq!(
            parse(b"+PONG\r\n").await.unwrap(),
            Value::Status("PONG".into())
        );
        assert_eq!(parse(b":42\r\n").await.unwrap(), Value::Integer(42));
        assert_eq!(parse(b"$-1\r\n").await.unwrap(), Value::Nil);
        assert_eq!(
            parse(b"$5\r\nhe\r\no\r\n").await.unwrap(),
            Value::Bulk(b"he\r\no".to_vec())
        );
        assert_eq!(
            parse(b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n").await.unwrap(),
            Value::Array(vec![
                Value::Bulk(b"a".to_vec()),
                Value::Array(vec![Value::Integer(1)])
            ])
        );
        assert_eq!(
            parse(b"-ERR no\r\n").await.unwrap(),
            Value::Error("ERR no".into())
        );
        assert!(matches!(
            parse(b"?x\r\n").await,
            Err(RespError::Protocol(_))
        ));
    }

    /// A reply from a peer that is not Redis, or a hostile one, is refused without allocating
    /// what it claims.
    #[tokio::test]
    async fn lengths_and_nesting_from_the_wire_are_bounded() {
        for wire in [
            &b"$9223372036854775000\r\n"[..],
            b"$16777217\r\n",
            b"*9223372036854775000\r\n",
            b"*1048577\r\n",
        ] {
            let (client, mut server) = tokio::io::duplex(1024);
            server.write_all(wire).await.unwrap();
            let mut connection = Connection::open(Box::new(client), None).await.unwrap();
            assert!(
                matches!(connection.read().await, Err(RespError::Protocol(_))),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        // Nine nested arrays.
        let (client, mut server) = tokio::io::duplex(1024);
        server.write_all(&b"*1\r\n".repeat(9)).await.unwrap();
        server.write_all(b":1\r\n").await.unwrap();
        let mut connection = Connection::open(Box::new(client), None).await.unwrap();
        assert!(matches!(
            connection.read().await,
            Err(RespError::Protocol(_))
        ));
        // A line without an end.
        let (client, mut server) = tokio::io::duplex(MAX_LINE * 2);
        let writer = tokio::spawn(async move {
            server.write_all(&vec![b'+'; MAX_LINE + 10]).await.unwrap();
            server
        });
        let mut connection = Connection::open(Box::new(client), None).await.unwrap();
        assert!(matches!(
            connection.read().await,
            Err(RespError::Protocol(_))
        ));
        drop(writer.await.unwrap());
    }
}
