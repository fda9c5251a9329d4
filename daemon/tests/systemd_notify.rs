//! `cairnd run` under a stand-in for systemd: a Unix datagram socket named by `NOTIFY_SOCKET`
//! receives `READY=1` once the API socket exists, `WATCHDOG=1` at half of `WATCHDOG_USEC`
//! (also on a node with no peer connected, which has nothing else to do), and `STOPPING=1`
//! on SIGTERM, after which the process exits 0.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_daemon::demo;
use common::{DEADLINE, STOP_TIMEOUT, cairnd, signal_pid, wait_exit};
use nix::sys::signal::Signal;

/// The watchdog period handed to `cairnd`; it pings at half of it.
const WATCHDOG_USEC: u64 = 200_000;

/// The next datagram, or `None` once `deadline` has passed.
fn receive(socket: &UnixDatagram, deadline: Instant) -> Option<String> {
    let left = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())?;
    socket.set_read_timeout(Some(left)).unwrap();
    let mut buffer = [0u8; 4096];
    match socket.recv(&mut buffer) {
        Ok(n) => Some(String::from_utf8_lossy(&buffer[..n]).into_owned()),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
        Err(e) => panic!("recv on the notify socket: {e}"),
    }
}

fn lines(datagram: &str) -> Vec<&str> {
    datagram.lines().collect()
}

#[test]
fn ready_watchdog_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    // Two members, one started: the node runs with no peer connected.
    let nodes = demo::write_cluster(dir.path(), 2, common::TIMING).unwrap();
    let node = &nodes[0];
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();

    let log = std::fs::File::create(&node.log).unwrap();
    // WATCHDOG_PID is left unset: sd-notify then takes WATCHDOG_USEC as meant for this process.
    let mut child = Command::new(cairnd())
        .args(["run", "--config"])
        .arg(&node.config)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let show_log = || std::fs::read_to_string(&node.log).unwrap_or_default();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // READY=1 arrives once the API socket exists.
        let deadline = Instant::now() + DEADLINE;
        loop {
            let datagram = receive(&notify, deadline).expect("no READY=1 before the deadline");
            if lines(&datagram).contains(&"READY=1") {
                assert!(node.socket.exists(), "READY=1 arrived before the API socket existed");
                break;
            }
        }

        // WATCHDOG=1 keeps arriving at about half the period, although nothing else happens.
        let window = Duration::from_millis(1_000);
        let started = Instant::now();
        let mut n_watchdog = 0;
        while let Some(datagram) = receive(&notify, started + window) {
            n_watchdog += lines(&datagram).iter().filter(|l| **l == "WATCHDOG=1").count();
        }
        assert!(n_watchdog >= 3, "{n_watchdog} WATCHDOG=1 in {window:?} at WATCHDOG_USEC={WATCHDOG_USEC}");

        // SIGTERM: STOPPING=1, then exit 0.
        signal_pid(child.id(), Signal::SIGTERM);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let datagram = receive(&notify, deadline).expect("no STOPPING=1 before the deadline");
            if lines(&datagram).contains(&"STOPPING=1") {
                break;
            }
        }
        let status = wait_exit(&mut child, STOP_TIMEOUT).expect("cairnd did not exit after SIGTERM");
        assert!(status.success(), "cairnd exited with {status}");
        assert!(!node.socket.exists(), "the API socket is left behind");
    }));
    if let Err(panic) = result {
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("===== log of {} =====\n{}", node.name, show_log());
        std::panic::resume_unwind(panic);
    }
}
