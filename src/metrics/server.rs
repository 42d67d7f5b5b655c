//! The tiny HTTP server of `GET /metrics`: one request per connection, HTTP/1.x, no keep-alive.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use super::exposition::CONTENT_TYPE;

/// Why `/metrics` could not be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} for /metrics: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Largest HTTP request head read from a scraper.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the `/metrics` listener.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr: addr.to_string(), source })
}

/// Serves `GET /metrics` (HTTP/1.x, one request per connection) until `shutdown` resolves;
/// `render` produces the body for each scrape.
pub async fn serve<R>(
    listener: tokio::net::TcpListener,
    render: R,
    shutdown: impl Future<Output = ()>,
) where
    R: Fn() -> String + Send + Sync + 'static,
{
    let render = std::sync::Arc::new(render);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    warn!(error = %err, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let render = render.clone();
        tokio::spawn(async move {
            if let Err(err) = answer(stream, render.as_ref()).await {
                debug!(%peer, error = %err, "metrics connection failed");
            }
        });
    }
}

/// Reads one request head and answers it.
async fn answer<R>(mut stream: tokio::net::TcpStream, render: &R) -> std::io::Result<()>
where
    R: Fn() -> String,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || head.len() + n > MAX_REQUEST_HEAD {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(true)
    };
    let complete = tokio::time::timeout(REQUEST_TIMEOUT, read_head).await.unwrap_or(Ok(false))?;
    let line = String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or_default());
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split('?').next().unwrap_or(t));
    let (status, ctype, body) = if !complete {
        ("400 Bad Request", "text/plain", "bad request\n".to_owned())
    } else if method != Some("GET") && method != Some("HEAD") {
        ("405 Method Not Allowed", "text/plain", "only GET\n".to_owned())
    } else if path != Some("/metrics") {
        ("404 Not Found", "text/plain", "try /metrics\n".to_owned())
    } else {
        ("200 OK", CONTENT_TYPE, render())
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != Some("HEAD") {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, || "m 1\n".to_owned(), async {
            let _ = rx.await;
        }));
        for (request, want) in [
            ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK"),
            ("GET /other HTTP/1.1\r\n\r\n", "404"),
            ("POST /metrics HTTP/1.1\r\n\r\n", "405"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {want}")), "{request:?}: {out}");
            if want == "200 OK" {
                assert!(out.ends_with("\r\n\r\nm 1\n"), "{out}");
                assert!(out.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")), "{out}");
            }
        }
        let _ = tx.send(());
        server.await.unwrap();
    }
}
