//! `udp-echo PORT`: answers every UDP datagram on PORT with `echo: ` and the datagram.
//!
//! The UDP server of the hostPort tests: busybox-static's `nc` has no UDP mode. Built as a
//! static executable (`rustc -C target-feature=+crt-static`) so it runs alone in an image
//! (`busybox-httpd.py --add /bin/udp-echo=PATH`).

use std::net::UdpSocket;

fn main() {
    let port = std::env::args().nth(1).expect("usage: udp-echo PORT");
    let socket = UdpSocket::bind(format!("0.0.0.0:{port}")).expect("bind the UDP port");
    println!("udp-echo listening on UDP port {port}");
    let mut buffer = [0u8; 2048];
    loop {
        let Ok((length, peer)) = socket.recv_from(&mut buffer) else {
            continue;
        };
        println!("udp-echo: {length} bytes from {peer}");
        let mut answer = b"echo: ".to_vec();
        answer.extend_from_slice(&buffer[..length]);
        let _ = socket.send_to(&answer, peer);
    }
}
