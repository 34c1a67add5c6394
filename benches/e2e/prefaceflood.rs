//! Opens many plain connections to a server, sends each the first 16 of the 24 bytes of the
//! HTTP/2 connection preface (`PRI * HTTP/2.0\r\n`), holds them, and reports the CPU time the
//! server spent meanwhile. Part of `benches/e2e/preface-flood.sh` (issue 13).
//!
//! Standard library only, so the script builds it with a bare `rustc -O`.
//!
//! ```text
//! prefaceflood ADDR CONNS PID SECONDS CLOCK_TICKS_PER_SECOND
//! ```
//!
//! Output, one `key=value` line each: `opened` (connections opened and given their 16 bytes),
//! `cpu_seconds` (the server's utime + stime over the measured SECONDS, from `/proc/PID/stat`),
//! `cores` (`cpu_seconds / SECONDS`), and `still_open` (connections the server had not closed at
//! the end; its header timeout closes them eventually).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::thread::sleep;
use std::time::Duration;

/// The first 16 bytes of the HTTP/2 preface.
const PARTIAL_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// utime + stime of `pid`, in clock ticks (fields 14 and 15 of `/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after it follow its closing paren.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Whether the server has closed `stream` (end of file or an error on a non-blocking read).
fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let [_, addr, conns, pid, seconds, ticks] = args else {
        return Err("usage: prefaceflood ADDR CONNS PID SECONDS CLOCK_TICKS_PER_SECOND".into());
    };
    let addr: SocketAddr = addr.parse().map_err(|e| format!("ADDR: {e}"))?;
    let conns: usize = conns.parse().map_err(|e| format!("CONNS: {e}"))?;
    let pid: u32 = pid.parse().map_err(|e| format!("PID: {e}"))?;
    let seconds: u64 = seconds.parse().map_err(|e| format!("SECONDS: {e}"))?;
    let ticks: f64 = ticks.parse().map_err(|e| format!("CLOCK_TICKS: {e}"))?;
    let mut streams = Vec::with_capacity(conns);
    for i in 0..conns {
        let mut stream =
            TcpStream::connect(addr).map_err(|e| format!("connection {i}: connect: {e}"))?;
        stream
            .write_all(PARTIAL_PREFACE)
            .map_err(|e| format!("connection {i}: write: {e}"))?;
        streams.push(stream);
    }
    println!("opened={}", streams.len());
    // Let the server take in the last connections before measuring.
    sleep(Duration::from_millis(500));
    let before = cpu_ticks(pid).ok_or("cannot read the server's /proc/PID/stat")?;
    sleep(Duration::from_secs(seconds));
    let after = cpu_ticks(pid).ok_or("cannot read the server's /proc/PID/stat")?;
    let cpu_seconds = (after - before) as f64 / ticks;
    println!("cpu_seconds={cpu_seconds:.3}");
    println!("cores={:.4}", cpu_seconds / seconds as f64);
    let mut open = 0;
    for stream in &mut streams {
        stream.set_nonblocking(true).map_err(|e| e.to_string())?;
        if !closed(stream) {
            open += 1;
        }
    }
    println!("still_open={open}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prefaceflood: {e}");
            ExitCode::FAILURE
        }
    }
}
