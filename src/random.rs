//! Random names and nonces, from the operating system.

/// `bytes` random bytes from the operating system (`getrandom(2)`), as lowercase hex: for the
/// job server's nonces, the client's id and temporary names, which must not be guessable from
/// anything a worker or an input can see (a clock, a pid).
pub fn hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    let mut filled = 0;
    while filled < bytes {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
