//! Generated code and helpers shared by the example provider (`orders`) and consumer
//! (`checkout`).

/// `orders.v1`.
#[allow(missing_docs, unused_qualifications, clippy::all, clippy::pedantic)]
pub mod orders {
    tonic::include_proto!("orders.v1");
}

/// `checkout.v1`.
#[allow(missing_docs, unused_qualifications, clippy::all, clippy::pedantic)]
pub mod checkout {
    tonic::include_proto!("checkout.v1");
}

/// The encoded `FileDescriptorSet` of `orders.v1`, for server reflection.
pub const ORDERS_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/orders.bin"));

/// The encoded `FileDescriptorSet` of `checkout.v1`, for server reflection.
pub const CHECKOUT_DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/checkout.bin"));

/// The Strata nodes to use: `--endpoints`, with the token in `STRATA_TOKEN` when access
/// control is on.
pub fn strata_client(endpoints: &[String]) -> strata_client::Client {
    strata_client::Client::new(endpoints).with_token(std::env::var("STRATA_TOKEN").ok())
}

/// Logs to stderr as `RUST_LOG` says (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
