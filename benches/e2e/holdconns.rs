//! Opens many keep-alive client connections to a server, holds them idle, and reads the
//! server's resident memory at each stage. Part of `benches/e2e/run.sh` (issue 6, memory).
//!
//! Standard library only, so the harness builds it with a bare `rustc -O` in its scratch
//! directory, outside the workspace and without touching any other build.
//!
//! ```text
//! holdconns ADDR CONNS PID REQUEST_FILE MODE
//! ```
//!
//! MODE is `keep-alive` (each connection is opened and given one request, its response read,
//! in batches of 64 so that the server's upstream pool stays small, then all are held idle) or
//! `open` (connections opened and held without a request; the server's header timeout bounds
//! how long that may last, so the reading comes 2 s after the last one opened).
//!
//! Output, one `key=value` line each: `before` (the server's memory before the first
//! connection), in `keep-alive` mode `fresh` (2 s after the last connection) and `held` (after
//! 20 s idle), in `open` mode `held` (2 s after the last connection), and `alive` (how many of
//! the connections the server still had open then, and how the requests went).
//!
//! RSS figures are in KiB, from `/proc/PID/status`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Requests in flight at once while every connection gets its one request.
const BATCH: usize = 64;
/// Pause before reading memory, so the server finishes accepting and settles.
const SETTLE: Duration = Duration::from_secs(2);
/// How long keep-alive connections are held idle before the settled reading: scoregate parks a
/// connection after 2 s without a request and its allocator returns the freed pages within
/// about 10 s more.
const IDLE: Duration = Duration::from_secs(20);

fn status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn report(stage: &str, pid: u32, conns: usize) {
    println!(
        "{stage} conns={conns} rss_kib={} hwm_kib={}",
        status_kib(pid, "VmRSS"),
        status_kib(pid, "VmHWM")
    );
}

/// Reads one HTTP/1.1 response with a `Content-Length` body; returns its status code.
fn read_response(stream: &mut TcpStream) -> std::io::Result<u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        return Ok(status);
    }
}

/// Whether the server still holds the connection open (no EOF, no error, nothing unexpected).
fn still_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let open = matches!(stream.peek(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    let _ = stream.set_nonblocking(false);
    open
}

fn connect(addr: SocketAddr, i: usize, count: usize) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| {
        format!("connection {i} of {count} to {addr} failed: {e} (is `ulimit -n` high enough?)")
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

fn run(
    addr: SocketAddr,
    count: usize,
    pid: u32,
    request: &[u8],
    with_request: bool,
) -> Result<(), String> {
    report("before", pid, 0);
    let started = Instant::now();
    let mut streams = Vec::with_capacity(count);
    let (mut ok, mut failed) = (0usize, 0usize);
    while streams.len() < count {
        let batch_start = streams.len();
        let batch_end = (batch_start + BATCH).min(count);
        let mut sent = Vec::with_capacity(BATCH);
        for i in batch_start..batch_end {
            let mut stream = connect(addr, i, count)?;
            sent.push(with_request && stream.write_all(request).is_ok());
            streams.push(stream);
        }
        if !with_request {
            continue;
        }
        for (stream, sent) in streams[batch_start..].iter_mut().zip(sent) {
            match sent.then(|| read_response(stream)) {
                Some(Ok(status)) if (200..300).contains(&status) => ok += 1,
                _ => failed += 1,
            }
        }
    }
    eprintln!(
        "holdconns: {count} connections opened{} in {:.1} s",
        if with_request {
            ", one request each,"
        } else {
            ""
        },
        started.elapsed().as_secs_f64()
    );
    sleep(SETTLE);
    if with_request {
        report("fresh", pid, streams.len());
        sleep(IDLE.saturating_sub(SETTLE));
    }
    report("held", pid, streams.len());
    let alive = streams.iter().filter(|s| still_open(s)).count();
    println!("alive conns={alive} responses_2xx={ok} responses_failed={failed}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let parsed = match args.as_slice() {
        [_, addr, count, pid, request, mode] if mode == "keep-alive" || mode == "open" => addr
            .parse::<SocketAddr>()
            .ok()
            .zip(count.parse::<usize>().ok())
            .zip(pid.parse::<u32>().ok())
            .map(|((a, c), p)| (a, c, p, request.clone(), mode == "keep-alive")),
        _ => None,
    };
    let Some((addr, count, pid, request_file, with_request)) = parsed else {
        eprintln!("usage: holdconns ADDR CONNS PID REQUEST_FILE keep-alive|open");
        return ExitCode::from(2);
    };
    let request = match std::fs::read(&request_file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("holdconns: cannot read {request_file}: {e}");
            return ExitCode::from(2);
        }
    };
    match run(addr, count, pid, &request, with_request) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("holdconns: {e}");
            ExitCode::FAILURE
        }
    }
}
