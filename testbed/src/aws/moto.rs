//! A moto server (SNS, SQS, CloudWatch Logs, …) in a Python child process.
//!
//! moto is the AWS peer of the integration tests (SPEC §8). It is installed in
//! `<workspace>/.venv` by `python3 -m venv .venv && .venv/bin/pip install
//! 'moto[server]'` (what `scripts/test.sh` does on a fresh machine). A test
//! that needs moto and does not find it panics with that command: it is never
//! skipped silently.
//!
//! The child binds `127.0.0.1:0` itself and prints the port it got, so there
//! is no race for a free port. It reads its stdin until end of file and then
//! exits: the test process holds the write end of that pipe, so the child
//! dies with the test process however that ends (normal exit, panic, SIGKILL).
//!
//! moto serves a few hundred requests per second and keeps every published
//! message in memory (SPEC §10): share one server per test process
//! ([`Moto::shared`]), give every test its own resource names
//! ([`super::unique_name`]) and drain the queues you subscribe.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Environment variable naming the Python interpreter that has moto installed.
pub const MOTO_PYTHON_ENV: &str = "KUBEHERALD_MOTO_PYTHON";

/// Set to any value to let moto's own request log through to the test's stderr.
pub const MOTO_VERBOSE_ENV: &str = "KUBEHERALD_MOTO_VERBOSE";

/// How to install moto, for the panic messages.
pub const MOTO_INSTALL_HINT: &str = "python3 -m venv .venv && .venv/bin/pip install 'moto[server]' \
     (run it in the workspace root; scripts/test.sh does it), or point KUBEHERALD_MOTO_PYTHON \
     at a Python that has moto[server]";

/// How long moto may take to import and bind (its first import compiles a lot of Python).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// The Python side. It prints one line, `KUBEHERALD-MOTO-PORT <port>`, or
/// `KUBEHERALD-MOTO-IMPORT-ERROR <error>` and exits 3.
const WRAPPER: &str = r#"
import logging, os, sys
try:
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
except Exception as e:
    print("KUBEHERALD-MOTO-IMPORT-ERROR %r" % (e,), flush=True)
    sys.exit(3)
if not os.environ.get("KUBEHERALD_MOTO_VERBOSE"):
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("KUBEHERALD-MOTO-PORT %d" % server.get_host_and_port()[1], flush=True)
# The parent holds the other end of stdin: end of file means it is gone.
sys.stdin.read()
os._exit(0)
"#;

/// A running moto server. Dropping it stops the child (the [`Moto::shared`]
/// one lives until the test process exits, and then stops by itself).
pub struct Moto {
    addr: SocketAddr,
    url: String,
    child: Mutex<Child>,
    /// Held only so the child sees end of file when this process goes away.
    _stdin: ChildStdin,
}

impl std::fmt::Debug for Moto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moto").field("url", &self.url).finish()
    }
}

impl Moto {
    /// The Python interpreter used: `$KUBEHERALD_MOTO_PYTHON`, else
    /// `<workspace root>/.venv/bin/python`.
    pub fn python() -> PathBuf {
        match std::env::var_os(MOTO_PYTHON_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"),
        }
    }

    /// Starts a new moto server and waits until it answers HTTP.
    ///
    /// # Panics
    ///
    /// When the interpreter is missing, moto cannot be imported, or the server
    /// does not come up within 90 s. The message says how to install moto.
    pub fn start() -> Moto {
        let python = Self::python();
        if !python.exists() {
            panic!(
                "moto is required by this test but {} does not exist.\nInstall it with: {MOTO_INSTALL_HINT}",
                python.display()
            );
        }
        let verbose = std::env::var_os(MOTO_VERBOSE_ENV).is_some();
        let mut child = Command::new(&python)
            .arg("-u")
            .arg("-c")
            .arg(WRAPPER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(if verbose {
                Stdio::inherit()
            } else {
                Stdio::piped()
            })
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} to start moto: {e}\nInstall it with: {MOTO_INSTALL_HINT}",
                    python.display()
                )
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take();

        // The first line tells the port (or why there is none). Read it on a
        // thread so a child that hangs cannot hang the test past the timeout.
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::Builder::new()
            .name("moto-stdout".into())
            .spawn(move || {
                let mut reader = BufReader::new(stdout);
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                let _ = tx.send(line);
                // Keep the pipe drained so the child never blocks on a full pipe.
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
            })
            .expect("spawn moto stdout reader");
        // stderr: keep the last few KiB to explain a failed start, drop the rest.
        let stderr_tail = std::sync::Arc::new(Mutex::new(Vec::<u8>::new()));
        if let Some(mut stderr) = stderr {
            let tail = stderr_tail.clone();
            std::thread::Builder::new()
                .name("moto-stderr".into())
                .spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = stderr.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let mut t = tail.lock().unwrap();
                        t.extend_from_slice(&buf[..n]);
                        let excess = t.len().saturating_sub(8192);
                        t.drain(..excess);
                    }
                })
                .expect("spawn moto stderr reader");
        }

        let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("moto did not start within {STARTUP_TIMEOUT:?}");
            }
        };
        let port = match line.trim().strip_prefix("KUBEHERALD-MOTO-PORT ") {
            Some(port) => port.parse::<u16>().expect("moto printed a bad port"),
            None => {
                let _ = child.wait();
                // Give the stderr reader a moment to collect the traceback, if any.
                let deadline = Instant::now() + Duration::from_millis(500);
                while Instant::now() < deadline && stderr_tail.lock().unwrap().is_empty() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let stderr = String::from_utf8_lossy(&stderr_tail.lock().unwrap()).into_owned();
                panic!(
                    "moto cannot be started with {}: {}{}\nInstall it with: {MOTO_INSTALL_HINT}",
                    python.display(),
                    line.trim(),
                    stderr
                );
            }
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_until_answers(addr, Instant::now() + STARTUP_TIMEOUT);
        Moto {
            addr,
            url: format!("http://{addr}"),
            child: Mutex::new(child),
            _stdin: stdin,
        }
    }

    /// One moto per test process, started on first use. Tests sharing it use
    /// unique resource names.
    pub fn shared() -> &'static Moto {
        static SHARED: OnceLock<Moto> = OnceLock::new();
        SHARED.get_or_init(Moto::start)
    }

    /// `http://127.0.0.1:<port>`, to use as an SDK endpoint URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The loopback address moto listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Polls with a plain HTTP request until moto answers with any status line.
fn wait_until_answers(addr: SocketAddr, deadline: Instant) {
    loop {
        if let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let request = "GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
            let mut head = [0u8; 12];
            if stream.write_all(request.as_bytes()).is_ok()
                && stream.read_exact(&mut head).is_ok()
                && head.starts_with(b"HTTP/1.")
            {
                return;
            }
        }
        if Instant::now() >= deadline {
            panic!("moto at {addr} does not answer HTTP");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
