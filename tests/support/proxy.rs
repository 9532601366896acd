//! A loopback TCP proxy that can be cut: a dependency down for one test only.

use super::*;

/// A loopback TCP proxy in front of a dependency: [`TcpProxy::cut`] closes every connection
/// through it and refuses new ones, and [`TcpProxy::restore`] listens again on the same port.
/// A dependency "down" for one test only, with no side effect on anything else using it.
#[derive(Debug)]
pub struct TcpProxy {
    pub addr: SocketAddr,
    upstream: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Connections accepted so far.
    pub accepted: Arc<AtomicU64>,
}

impl TcpProxy {
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, _) = tokio::sync::watch::channel(false);
        let proxy = TcpProxy {
            addr,
            upstream,
            stop,
            task: Mutex::new(None),
            accepted: Arc::new(AtomicU64::new(0)),
        };
        proxy.serve(listener);
        proxy
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let upstream = self.upstream;
        let mut stopped = self.stop.subscribe();
        let accepted = self.accepted.clone();
        let stop = self.stop.clone();
        let task = tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                    _ = stopped.wait_for(|s| *s) => return,
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let mut cut = stop.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.wait_for(|s| *s) => {}
                    }
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// Close every connection through the proxy and stop listening.
    pub async fn cut(&self) {
        self.stop.send_replace(true);
        let task = self.task.lock().unwrap().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// Listen again, on the same port.
    pub async fn restore(&self) {
        self.stop.send_replace(false);
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).expect("a URL");
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.addr.port())).unwrap();
        u.to_string()
    }
}

/// The loopback address of a URL's host and port (`amqp://…@127.0.0.1:5672/…`).
pub fn socket_of(url: &str) -> SocketAddr {
    let u = url::Url::parse(url).expect("a URL");
    let host = u.host_str().expect("a host");
    let port = u.port_or_known_default().unwrap_or(5672);
    format!("{host}:{port}")
        .parse()
        .expect("a loopback IP in the test URL")
}
