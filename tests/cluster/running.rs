//! A run of the real binary in the background, for the tests that act on the engines while
//! it runs (kill one, cut its link, drain its node).

use crate::util::within;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A run of the real binary in the background whose stderr is read as it comes, so that a test
/// can wait for a message (a failover note) while the run goes on. Killed on drop.
pub struct Running {
    child: Option<Child>,
    err: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    out: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl Running {
    pub fn spawn(cmd: &mut Command) -> Running {
        use std::io::Read;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn isc-transcode");
        let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = child.stderr.take().expect("stderr");
        let sink = err.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_str(&text);
            }
        });
        let mut stdout = child.stdout.take().expect("stdout");
        let out = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = stdout.read_to_end(&mut v);
            v
        });
        Running {
            child: Some(child),
            err,
            reader: Some(reader),
            out: Some(out),
        }
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.err.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Wait until its stderr contains `text`; panic past `timeout`.
    pub fn wait_stderr(&self, text: &str, timeout: Duration) {
        assert!(
            within(timeout, || self.stderr().contains(text)),
            "timed out after {timeout:?} waiting for {text:?} on stderr:\n{}",
            self.stderr()
        );
    }

    /// Wait for it to end, at most `limit`: past that, kill it and panic with what it said.
    pub fn wait(mut self, limit: Duration) -> Output {
        let mut child = self.child.take().expect("child");
        let start = Instant::now();
        while child.try_wait().expect("wait").is_none() {
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("still running after {limit:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let status = child.wait().expect("wait");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let stdout = self
            .out
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let o = Output {
            status,
            stdout,
            stderr: self.stderr().into_bytes(),
        };
        eprintln!(
            "--- exit {:?}\n--- stdout\n{}--- stderr\n{}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
