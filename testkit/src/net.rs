//! Free loopback ports that stay reserved until handed on: [`free_port`] binds `127.0.0.1:0`
//! and keeps the listener, so nothing else on the machine (another test, another cluster) can
//! be given the same port meanwhile. Bind-and-drop would leave the port free for anyone from the
//! probe until the real bind.

use std::io;
use std::net::{SocketAddr, TcpListener};

use socket2::{Domain, Socket, Type};

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

/// A port on 127.0.0.1 that nothing listens on and that stays so while the guard lives: a socket
/// bound to it without `listen(2)`, so a connection attempt is refused (RST) at once, and no
/// other program is given the port meanwhile. For "the server is unreachable" tests.
///
/// Errors: the socket cannot be created or bound.
pub fn refusing_port() -> io::Result<RefusingPort> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    let addr = socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "the bound address is not IP"))?;
    Ok(RefusingPort {
        _socket: socket,
        addr,
    })
}

/// A port reserved by [`refusing_port`]: bound, not listening. Dropping it frees the port.
#[derive(Debug)]
pub struct RefusingPort {
    _socket: Socket,
    addr: SocketAddr,
}

impl RefusingPort {
    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
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

    #[test]
    fn a_refusing_port_refuses_connections_and_is_not_handed_out() {
        let refusing = refusing_port().unwrap();
        let err = std::net::TcpStream::connect(refusing.addr()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
        assert!(
            reserve_port(refusing.port()).is_err(),
            "held: nobody else can bind it"
        );
    }
}
