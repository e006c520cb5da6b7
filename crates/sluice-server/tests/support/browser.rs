//! A real headless browser (Debian's Chromium) driven over the Chrome DevTools Protocol, so a
//! test can click what a person clicks: Chromium listens on a loopback port of its own
//! choosing (`--remote-debugging-port=0`, written to `DevToolsActivePort` in its profile),
//! the test opens the page in a new target and evaluates expressions in it.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Where Debian installs Chromium (`scripts/services-up` installs it).
pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless, in a container, and quiet on the network.
pub(crate) const HEADLESS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Fails with what to do when Chromium is not installed.
pub(crate) fn require_chromium() {
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "this test drives Debian's Chromium at {CHROMIUM}: run scripts/services-up (it installs it) or `apt-get install chromium`"
    );
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium with one page open; killed when dropped.
pub(crate) struct Browser {
    child: Child,
    socket: Socket,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts Chromium and opens `url` in a page.
    pub(crate) async fn open(url: &str) -> Self {
        require_chromium();
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(CHROMIUM)
            .args(HEADLESS)
            .args([
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromium");
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let (port, path) = loop {
            if let Ok(text) = std::fs::read_to_string(&port_file) {
                let mut lines = text.lines();
                if let (Some(port), Some(path)) = (lines.next(), lines.next()) {
                    break (port.to_owned(), path.to_owned());
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}{path}"))
            .await
            .expect("connect to chromium's DevTools endpoint");
        let mut browser = Self {
            child,
            socket,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": url }), false)
            .await;
        let target = target["targetId"].as_str().expect("a target id").to_owned();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
                false,
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        browser
    }

    /// One DevTools command (to the page's session, or to the browser); its result.
    async fn call(&mut self, method: &str, params: Value, in_page: bool) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut command = json!({ "id": id, "method": method, "params": params });
        if in_page {
            command["sessionId"] = Value::from(self.session.clone());
        }
        self.socket
            .send(Message::text(command.to_string()))
            .await
            .expect("send a DevTools command");
        let deadline = Duration::from_secs(30);
        loop {
            let frame = tokio::time::timeout(deadline, self.socket.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method} within 30 s"))
                .expect("the DevTools connection closed")
                .expect("a DevTools frame");
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
            if answer["id"] != id {
                continue; // an event
            }
            if let Some(error) = answer.get("error") {
                panic!("{method} failed: {error}");
            }
            return answer["result"].clone();
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise); its value, as JSON.
    pub(crate) async fn eval(&mut self, expression: &str) -> Value {
        match self.try_eval(expression).await {
            Ok(value) => value,
            Err(exception) => panic!("`{expression}` threw: {exception}"),
        }
    }

    /// Evaluates `expression`; its value, or the exception it threw.
    async fn try_eval(&mut self, expression: &str) -> Result<Value, Value> {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
                true,
            )
            .await;
        match result.get("exceptionDetails") {
            Some(exception) => Err(exception.clone()),
            None => Ok(result["result"]["value"].clone()),
        }
    }

    /// Evaluates `expression` until it is truthy (deadline 30 s); its last value. An
    /// expression that throws is not true yet (the page may still be loading: no
    /// `document.body` before its first parse).
    pub(crate) async fn until(&mut self, expression: &str, what: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.try_eval(expression).await.unwrap_or_else(
                |exception| json!({ "threw": exception["exception"]["description"].clone() }),
            );
            let truthy = match &value {
                Value::Null => false,
                Value::Object(o) if o.contains_key("threw") => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: still not true after 30 s (`{expression}` = {value})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
