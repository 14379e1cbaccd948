//! The etcd gRPC API against an in-memory backend, through tonic clients generated from the
//! same protobuf files (wire-compatible with etcd's).

mod fake;
mod t10_basic_cluster;
mod t10_basic_kv;
mod t10_basic_lease;
mod t10_basic_lock_election;
mod t10_basic_watch;
mod t20_lifecycle_shutdown;
mod t50_env_bad_input;

use fake::FakeBackend;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strata_etcd::pb::etcdserverpb::cluster_client::ClusterClient;
use strata_etcd::pb::etcdserverpb::kv_client::KvClient;
use strata_etcd::pb::etcdserverpb::lease_client::LeaseClient;
use strata_etcd::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use strata_etcd::pb::etcdserverpb::watch_client::WatchClient;
use strata_etcd::pb::v3electionpb::election_client::ElectionClient;
use strata_etcd::pb::v3lockpb::lock_client::LockClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The request limit the test servers use: small, so oversized requests are cheap to build.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Longest a test waits for any one reply.
pub const WAIT: Duration = Duration::from_secs(5);

/// A running server on loopback with its backend.
pub struct TestServer {
    pub addr: SocketAddr,
    pub backend: Arc<FakeBackend>,
    pub channel: Channel,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), strata_etcd::Error>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let backend = FakeBackend::new();
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(strata_etcd::serve(
            listener,
            backend.clone(),
            MAX_REQUEST_BYTES,
            None,
            async move {
                let _ = signal.await;
            },
        ));
        let channel = Channel::from_shared(format!("http://{addr}"))
            .expect("endpoint url")
            .connect_timeout(WAIT)
            .connect()
            .await
            .expect("connect to the test server");
        TestServer {
            addr,
            backend,
            channel,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    pub fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone())
    }

    pub fn watch(&self) -> WatchClient<Channel> {
        WatchClient::new(self.channel.clone())
    }

    pub fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone())
    }

    pub fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel.clone())
    }

    pub fn maintenance(&self) -> MaintenanceClient<Channel> {
        MaintenanceClient::new(self.channel.clone())
    }

    pub fn lock(&self) -> LockClient<Channel> {
        LockClient::new(self.channel.clone())
    }

    pub fn election(&self) -> ElectionClient<Channel> {
        ElectionClient::new(self.channel.clone())
    }

    /// Signals shutdown and waits for `serve` to return.
    pub async fn shutdown(mut self) -> Result<(), strata_etcd::Error> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let task = self.task.take().expect("shut down once");
        tokio::time::timeout(WAIT, task)
            .await
            .expect("serve returns after shutdown")
            .expect("serve task does not panic")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Waits for the next message of a stream, failing the test after [`WAIT`].
pub async fn next<T>(stream: &mut tonic::Streaming<T>) -> Result<Option<T>, tonic::Status> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a reply within the wait")
}
