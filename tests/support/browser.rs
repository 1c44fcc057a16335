//! A real browser for the dashboard tests: headless Chromium (Debian's `chromium`,
//! installed by scripts/setup), driven over the DevTools protocol on a websocket, as a
//! person would use it: open a page, type into it, read what it shows, take a picture.

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket, stream::MaybeTlsStream};

use super::{Process, port_in_log, spawn};

pub struct Browser {
    _process: Process,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    /// Starts Chromium on a free DevTools port (it reports the one it bound) and attaches
    /// to its blank page. As root it needs `--no-sandbox`.
    pub fn start(dir: &Path, logs: &Path) -> Self {
        let profile = dir.join("chromium-profile");
        let process = spawn(
            "chromium",
            &[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--window-size=1280,1600",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.display()),
                "about:blank",
            ],
            logs,
            "chromium",
        );
        let marker = "DevTools listening on ws://127.0.0.1:";
        let port = port_in_log(&logs.join("chromium.log"), marker, "chromium");
        let targets = devtools_targets(port);
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("chromium has a page");
        let url = page["webSocketDebuggerUrl"].as_str().unwrap();
        let (socket, _) = tungstenite::connect(url).expect("attaching to chromium's page");
        // A command chromium never answers fails the test instead of hanging it.
        if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
            stream
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
        }
        Self {
            _process: process,
            socket,
            next_id: 1,
        }
    }

    /// Sends one DevTools command and returns its result (events in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"id": id, "method": method, "params": params});
        self.socket
            .send(Message::text(request.to_string()))
            .unwrap();
        loop {
            let message = self
                .socket
                .read()
                .unwrap_or_else(|e| panic!("{method}: no answer from chromium: {e}"));
            let Message::Text(text) = message else {
                continue;
            };
            let answer: Value = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer["error"].is_null(), "{method}: {answer}");
                return answer["result"].clone();
            }
        }
    }

    pub fn open(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url}));
    }

    pub fn reload(&mut self) {
        self.call("Page.reload", json!({"ignoreCache": true}));
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        );
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Polls `expression` until it is true.
    pub fn wait_for(&mut self, expression: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        // While a page loads, what the expression reads may not exist yet.
        let guarded =
            format!("(() => {{ try {{ return {expression}; }} catch (e) {{ return false; }} }})()");
        while self.eval(&guarded) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "the page never had {expression}; it shows: {}",
                self.eval("document.body.innerText")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page as it is drawn now.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine;
        let shot = self.call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        );
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    }
}

/// The pages and workers Chromium's DevTools server lists. It answers HTTP/1.1 only.
fn devtools_targets(port: u16) -> Value {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // It keeps the connection open whatever the request says: read what Content-Length
    // says, not to the end.
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        let n = stream
            .read(&mut buffer)
            .expect("reading chromium's target list");
        assert!(n > 0, "chromium closed the connection");
        answer.extend_from_slice(&buffer[..n]);
        let text = String::from_utf8_lossy(&answer);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            })
            .expect("a Content-Length");
        if body.len() >= length {
            return serde_json::from_str(&body[..length]).unwrap_or_else(|e| panic!("{e}: {text}"));
        }
    }
}
