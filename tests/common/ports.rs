//! Port numbers a test holds without listening on them, so that nobody else can take them meanwhile:
//! [`closed_port`] is a target that refuses connections; a [`ReservedPort`] is a number a role binds, loses and binds
//! again (a server restarted on the same port), or a number the built binary needs on its command line.
//!
//! Both are a socket bound to `127.0.0.1:0` that never listens. A connection to it is refused (RST), and the kernel
//! gives the number to no ephemeral bind or outgoing connection while the socket lives. They replace "bind port 0,
//! drop the listener, reuse the number", where any other test could take the number between the drop and the reuse.
//!
//! A [`ReservedPort`] sets `SO_REUSEADDR`, which Linux honours between two sockets when neither is listening: a
//! listener that sets it too (tokio's and std's `TcpListener::bind` do on Unix, so Fluidity's roles do) can bind the
//! number while the reservation holds it, and bind it again after the first listener closed. A [`ClosedPort`] does
//! not set it, so no other bind of its number succeeds at all.
#![allow(
    dead_code,
    reason = "every test crate compiles the whole harness and each uses a different part of this module"
)]

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use tokio::net::TcpSocket;

/// A loopback port where nothing listens and nothing else can bind, until dropped.
pub struct ClosedPort {
    pub addr: SocketAddr,
    _socket: TcpSocket,
}

/// Shows as the address, so `format!("http://{closed}/")` reads naturally.
impl fmt::Display for ClosedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

/// A port with nothing listening on it: connections are refused for as long as the value lives.
pub fn closed_port() -> ClosedPort {
    let socket = TcpSocket::new_v4().expect("a TCP socket");
    socket
        .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .expect("bind 127.0.0.1:0");
    ClosedPort {
        addr: socket.local_addr().expect("bound address"),
        _socket: socket,
    }
}

/// A loopback port kept for this test until dropped; listeners that set `SO_REUSEADDR` may bind it, one at a time.
pub struct ReservedPort {
    socket: TcpSocket,
}

impl ReservedPort {
    /// Works outside a runtime too (the socket is not registered with the reactor: it never listens or connects).
    pub fn new() -> Self {
        let socket = TcpSocket::new_v4().expect("a TCP socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket
            .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .expect("bind 127.0.0.1:0");
        Self { socket }
    }

    pub fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("bound address")
    }

    pub fn port(&self) -> u16 {
        self.addr().port()
    }
}
