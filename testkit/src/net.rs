//! Free loopback ports that stay reserved until handed on: [`free_port`] binds `127.0.0.1:0`
//! and keeps the listener, so nothing else on the machine (another test, another cluster) can
//! be given the same port meanwhile. Bind-and-drop would leave the port free for anyone from the
//! probe until the real bind.

use std::io;
use std::net::{SocketAddr, TcpListener};

/// A bound `127.0.0.1` TCP listener held as a reservation of its port.
///
/// Use the listener itself ([`PortGuard::into_listener`]) when this process serves on the port;
/// otherwise pass the port to the program that binds it and call [`PortGuard::release`] right
/// before starting that program (the only window in which another process could take it).
/// Dropping the guard releases the port too.
#[derive(Debug)]
pub struct PortGuard {
    listener: TcpListener,
    addr: SocketAddr,
}

impl PortGuard {
    /// The reserved port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The reserved address, `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener so that another program can bind the port now; returns its address.
    pub fn release(self) -> SocketAddr {
        self.addr
    }

    /// The listener itself, to accept connections on the port in this process.
    pub fn into_listener(self) -> TcpListener {
        self.listener
    }
}

/// Reserves a free port on 127.0.0.1 (binds port 0 and holds the listener).
///
/// Errors: the bind fails (no loopback interface, out of ephemeral ports).
pub fn free_port() -> io::Result<PortGuard> {
    reserve(0)
}

/// Reserves `port` on 127.0.0.1 if it is free. Errors: it is taken (`AddrInUse`) or cannot be
/// bound.
pub fn reserve_port(port: u16) -> io::Result<PortGuard> {
    reserve(port)
}

fn reserve(port: u16) -> io::Result<PortGuard> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    let addr = listener.local_addr()?;
    Ok(PortGuard { listener, addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_port_is_not_handed_out_again_and_is_free_once_released() {
        let guard = free_port().unwrap();
        let port = guard.port();
        assert_ne!(port, 0);
        assert!(reserve_port(port).is_err(), "held: nobody else can bind it");
        let addr = guard.release();
        assert_eq!(addr.port(), port);
        let again = reserve_port(port).expect("released: free again");
        assert_eq!(again.port(), port);
    }
}
