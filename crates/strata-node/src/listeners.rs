//! Binding listeners: every listener of the node and of its components is bound the same
//! way, before anything starts, so a port conflict fails start-up at once with the flag that
//! fixes it.

use crate::NodeError;
use std::net::SocketAddr;
use strata_component::{Bound, Transport};
use tokio::net::TcpListener;

pub(crate) fn bind_err(what: &'static str, addr: &str, cause: std::io::Error) -> NodeError {
    NodeError::Bind {
        what,
        addr: addr.to_string(),
        cause,
    }
}

/// The message of [`NodeError::Bind`]: what happened and the flag that fixes it.
pub(crate) fn bind_message(what: &str, addr: &str, cause: &std::io::Error) -> String {
    let flag = strata_settings::listener_flag(what);
    match cause.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "cannot listen on {addr} for {what}: the port is in use (another strata?); stop that process, or pass {flag} with another port (port 0 picks a free one)"
        ),
        _ => format!("cannot listen on {addr} for {what}: {cause}; check {flag}"),
    }
}

/// Pending connections a listener queues before the kernel drops new ones (tokio's default
/// is 128, which a reconnect storm of long-polls or watches overflows).
const LISTEN_BACKLOG: u32 = 4096;

async fn bind_tcp(what: &'static str, addr: &str) -> Result<TcpListener, NodeError> {
    let parsed: SocketAddr = addr.parse().map_err(|_| {
        bind_err(
            what,
            addr,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not IP:PORT"),
        )
    })?;
    let socket = if parsed.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(|e| bind_err(what, addr, e))?;
    socket
        .set_reuseaddr(true)
        .and_then(|()| socket.bind(parsed))
        .map_err(|e| bind_err(what, addr, e))?;
    socket
        .listen(LISTEN_BACKLOG)
        .map_err(|e| bind_err(what, addr, e))
}

/// Binds listener `what` on `addr`: TCP, or TCP and UDP on the same port (retrying when port
/// 0 picked a TCP port whose UDP twin is taken).
pub(crate) async fn bind(
    what: &'static str,
    addr: &str,
    transport: Transport,
) -> Result<Bound, NodeError> {
    let mut last = None;
    for _ in 0..16 {
        let tcp = bind_tcp(what, addr).await?;
        let local = tcp.local_addr().map_err(|e| bind_err(what, addr, e))?;
        if transport == Transport::Tcp {
            return Ok(Bound {
                tcp,
                udp: None,
                addr: local,
            });
        }
        match tokio::net::UdpSocket::bind(local).await {
            Ok(udp) => {
                return Ok(Bound {
                    tcp,
                    udp: Some(udp),
                    addr: local,
                })
            }
            Err(e) => last = Some(e),
        }
    }
    Err(bind_err(
        what,
        addr,
        last.unwrap_or_else(|| std::io::Error::other("no free port")),
    ))
}
