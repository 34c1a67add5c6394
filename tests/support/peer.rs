//! The cluster protocol spoken by hand (with the `h2` crate), as another replica would: for
//! tests that need a peer the router does not control, and for measuring grants directly.

use std::net::SocketAddr;

use scoregate::cluster::credential::Credential;

/// A connection to a replica's cluster port that proved the credential, as a peer's would,
/// made with the `h2` crate so that aborting the returned task closes the socket at once.
pub async fn authenticated_peer(
    address: SocketAddr,
    secret: &str,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    (prove(sender, address, secret).await, connection)
}

/// The hello and the proof of the credential, on a fresh connection.
async fn prove(
    sender: h2::client::SendRequest<bytes::Bytes>,
    address: SocketAddr,
    secret: &str,
) -> h2::client::SendRequest<bytes::Bytes> {
    let mut sender = sender.ready().await.unwrap();
    let credential = Credential::new(secret.as_bytes()).unwrap();
    let nonce = Credential::nonce();
    let hello = http::Request::get(format!("http://{address}/v1/hello"))
        .header("x-scoregate-nonce", &nonce)
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(hello, true).unwrap();
    let response = response.await.unwrap();
    let server_nonce = response.headers()["x-scoregate-nonce"].as_bytes().to_vec();
    let proof = response.headers()["x-scoregate-proof"].as_bytes();
    assert!(credential.verify_server(nonce.as_bytes(), &server_nonce, proof));
    let auth = http::Request::post(format!("http://{address}/v1/auth"))
        .header("x-scoregate-proof", credential.client_proof(&server_nonce))
        .body(())
        .unwrap();
    let (response, _) = sender.send_request(auth, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 204);
    sender
}

/// Asks for a slot of `deployment` (`endpoint/deployment`); the lease lasts while the returned
/// stream is open.
pub async fn grant(
    sender: &mut h2::client::SendRequest<bytes::Bytes>,
    address: SocketAddr,
    deployment: &str,
) -> (http::Response<h2::RecvStream>, h2::SendStream<bytes::Bytes>) {
    let request = http::Request::post(format!("http://{address}/v1/grant"))
        .header("x-scoregate-deployment", deployment)
        .header("x-scoregate-wait-ms", "0")
        .body(())
        .unwrap();
    let mut sender = sender.clone().ready().await.unwrap();
    let (response, stream) = sender.send_request(request, false).unwrap();
    (response.await.unwrap(), stream)
}

/// A peer connection whose driving can be paused: the socket stays open but nothing is read,
/// written or acknowledged (as with a process stopped by SIGSTOP).
pub struct Pausable {
    /// Requests on the connection.
    pub sender: h2::client::SendRequest<bytes::Bytes>,
    pause: std::sync::Arc<tokio::sync::Notify>,
}

impl Pausable {
    /// Stops driving the connection (for good).
    pub fn pause(&self) {
        self.pause.notify_one();
    }
}

/// Like [`authenticated_peer`], pausable; the task holds the socket until dropped or aborted.
pub async fn pausable_peer(
    address: SocketAddr,
    secret: &str,
) -> (Pausable, tokio::task::JoinHandle<()>) {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = h2::client::handshake(stream).await.unwrap();
    let pause = std::sync::Arc::new(tokio::sync::Notify::new());
    let paused = pause.clone();
    let task = tokio::spawn(async move {
        let mut connection = Box::pin(connection);
        tokio::select! {
            _ = &mut connection => {}
            () = paused.notified() => {
                // Keep the socket, never poll it again.
                std::future::pending::<()>().await;
                drop(connection);
            }
        }
    });
    let sender = prove(sender, address, secret).await;
    (Pausable { sender, pause }, task)
}
