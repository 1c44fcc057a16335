//! Shared harness for the black-box tests: real `outloud` and `outloud-worker`
//! processes on loopback, and a client to watch them.

#![allow(dead_code)] // each test binary uses its own part of the harness

pub mod browser;
pub mod files;
pub mod manifests;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use outloud_coordinator::scheduler::{Job, RunState, TaskState};
use outloud_core::client::{Connection, Dial};
use outloud_proto::v1 as pb;

/// Training tests share two cores: run them one at a time.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    CLUSTER.lock().await
}

/// `$OUTLOUD_BIN_DIR`, else the directory above this test executable's `deps/`.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var("OUTLOUD_BIN_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => {
            let exe = std::env::current_exe().unwrap();
            exe.parent().unwrap().parent().unwrap().to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (scripts/test does)",
        path.display()
    );
    path
}

/// The repository's `../shared/data` folder.
pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::File::create(dir.join(name)).unwrap()
}

/// A child process killed when dropped.
pub struct Process {
    pub child: Child,
    pub name: String,
}

impl Process {
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `which` (`-STOP`, `-CONT`, ...) to the process.
    pub fn signal(&self, which: &str) {
        let status = Command::new("kill")
            .args([which, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn exited_within(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.sigkill();
    }
}

pub struct Coordinator {
    pub process: Process,
    pub url: String,
    pub port: u16,
    /// Where it serves HTTP (dashboard, API, metrics), when asked to (`--http`).
    pub metrics: Option<String>,
    /// Its log file.
    pub log: PathBuf,
}

impl Coordinator {
    /// Port 0: the coordinator binds a free port itself and reports it (no race with
    /// other tests for a port). A restart passes the port it had.
    pub fn start(state_dir: &Path, port: u16, lease_timeout_ms: u64, token: Option<&str>) -> Self {
        Self::start_with(state_dir, port, lease_timeout_ms, token, &[])
    }

    pub fn start_with(
        state_dir: &Path,
        port: u16,
        lease_timeout_ms: u64,
        token: Option<&str>,
        extra: &[&str],
    ) -> Self {
        Self::start_with_env(state_dir, port, lease_timeout_ms, token, extra, &[])
    }

    /// With extra environment, e.g. credentials for S3 storage it checks data in.
    pub fn start_with_env(
        state_dir: &Path,
        port: u16,
        lease_timeout_ms: u64,
        token: Option<&str>,
        extra: &[&str],
        env: &[(String, String)],
    ) -> Self {
        let logs = state_dir.parent().unwrap().join("logs");
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let start = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log_path = logs.join(format!("coordinator-{start}.log"));
        let log = log_file(&logs, &format!("coordinator-{start}.log"));
        let address_file = logs.join(format!("coordinator-{start}.addr"));
        let mut command = Command::new(bin("outloud"));
        command
            .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--state-dir")
            .arg(state_dir)
            .arg("--address-file")
            .arg(&address_file)
            .args(["--lease-timeout-ms", &lease_timeout_ms.to_string()])
            .args(extra)
            .envs(env.iter().cloned())
            .env_remove("OUTLOUD_TOKEN")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(token) = token {
            command.env("OUTLOUD_TOKEN", token);
        }
        let child = command.spawn().expect("starting outloud coordinator");
        let deadline = Instant::now() + Duration::from_secs(20);
        let bound: serde_json::Value = loop {
            if let Ok(text) = std::fs::read_to_string(&address_file) {
                break serde_json::from_str(&text).expect("the address file is JSON");
            }
            assert!(
                Instant::now() < deadline,
                "the coordinator did not report its address"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let grpc = bound["grpc"].as_str().unwrap().to_string();
        Self {
            process: Process {
                child,
                name: "coordinator".into(),
            },
            url: format!("http://{grpc}"),
            port: grpc.rsplit(':').next().unwrap().parse().unwrap(),
            metrics: bound["metrics"].as_str().map(str::to_string),
            log: log_path,
        }
    }
}

pub fn start_worker(url: &str, logs: &Path, name: &str, token: Option<&str>) -> Process {
    start_worker_with_env(url, logs, name, token, &[])
}

pub fn start_worker_with_env(
    url: &str,
    logs: &Path,
    name: &str,
    token: Option<&str>,
    env: &[(String, String)],
) -> Process {
    let log = log_file(logs, &format!("{name}.log"));
    let mut command = Command::new(bin("outloud-worker"));
    command
        .args(["--coordinator", url, "--threads", "1", "--device", "cpu"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("OUTLOUD_TOKEN")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if let Some(token) = token {
        command.env("OUTLOUD_TOKEN", token);
    }
    Process {
        child: command.spawn().expect("starting outloud-worker"),
        name: name.into(),
    }
}

/// Runs the `outloud` CLI to completion.
pub fn cli(args: &[&str], token: Option<&str>) -> Output {
    let mut command = Command::new(bin("outloud"));
    command
        .args(args)
        .env_remove("OUTLOUD_TOKEN")
        .stdin(Stdio::null());
    if let Some(token) = token {
        command.env("OUTLOUD_TOKEN", token);
    }
    command.output().expect("running outloud")
}

/// Runs the `outloud` CLI to completion in `dir`, without a token.
pub fn cli_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin("outloud"))
        .current_dir(dir)
        .args(args)
        .env_remove("OUTLOUD_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("running outloud")
}

pub async fn connect(url: &str, token: Option<&str>) -> Connection {
    Connection::open(url, &Dial::token(token))
        .await
        .expect("connecting to the coordinator")
}

pub async fn submit(connection: &Connection, yaml: &str, working_dir: &Path) -> String {
    let request = pb::SubmitJobRequest {
        spec_yaml: yaml.into(),
        source_name: "test.yaml".into(),
        working_dir: working_dir.display().to_string(),
    };
    connection
        .jobs()
        .submit_job(request)
        .await
        .expect("submitting the job")
        .into_inner()
        .job_id
}

pub async fn job(connection: &Connection, id: &str) -> Job {
    let request = pb::GetJobRequest {
        job_id: id.into(),
        ..Default::default()
    };
    let answer = connection
        .jobs()
        .get_job(request)
        .await
        .expect("getting the job")
        .into_inner();
    serde_json::from_str(&answer.job_json).unwrap()
}

/// Polls until `done(job)` or the timeout, which fails the test with the job's state.
pub async fn wait_until(
    connection: &Connection,
    id: &str,
    timeout: Duration,
    done: impl Fn(&Job) -> bool,
) -> Job {
    let deadline = Instant::now() + timeout;
    loop {
        // Transient errors are expected while a coordinator restarts.
        let request = pb::GetJobRequest {
            job_id: id.into(),
            ..Default::default()
        };
        if let Ok(answer) = connection.jobs().get_job(request).await {
            let job: Job = serde_json::from_str(&answer.into_inner().job_json).unwrap();
            if done(&job) {
                return job;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting on job {id}: {}",
                    serde_json::to_string_pretty(&job).unwrap()
                );
            }
        } else if Instant::now() > deadline {
            panic!("timed out waiting on job {id}: coordinator unreachable");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn finished(job: &Job) -> bool {
    job.state.is_finished()
}

pub fn assert_succeeded(job: &Job) {
    assert_eq!(
        job.state,
        RunState::Succeeded,
        "job did not succeed: {:?}",
        job.error
    );
}

/// What the first task of step `step` committed (its URL), checked to lie in the
/// folder of the lease that committed it: `.../<step>/attempt-<epoch>/`.
pub fn committed(job: &Job, step: &str) -> String {
    let task = &job
        .step(step)
        .unwrap_or_else(|| panic!("no step {step}"))
        .tasks[0];
    let TaskState::Succeeded { output } = &task.state else {
        panic!("{step} did not succeed: {:?}", task.state);
    };
    let folder = format!("/jobs/{}/{step}/attempt-{}/", job.id, task.epoch);
    assert!(output.contains(&folder), "{output} is not in {folder}");
    output.clone()
}

/// The local path of what step `step` committed in `file://` storage.
pub fn committed_path(job: &Job, step: &str) -> PathBuf {
    let url = url::Url::parse(&committed(job, step)).unwrap();
    url.to_file_path().unwrap()
}

/// A phase-1 job spec on the given data section.
pub fn language_job(storage: &Path, data: &str, steps: u64, checkpoint_every: u64) -> String {
    format!(
        "name: test\nstorage: {storage}\ndata:\n{data}\nmodel: {{preset: tiny}}\nphases:\n  - name: language\n    kind: language\n    data: [corpus]\n    steps: {steps}\n    batch_size: 16\n    learning_rate: 0.003\n    warmup_steps: 10\n    checkpoint_every: {checkpoint_every}\n",
        storage = storage.display()
    )
}

/// A phase-1 job of `steps` (12 rows a batch, a checkpoint every 10 steps) whose phase
/// also has the spec lines `gang` (such as `world_size: 2`).
pub fn gang_job(storage: &Path, steps: u64, gang: &str) -> String {
    let data = "  - {name: corpus, kind: generated_text, seed: 5, words: 30000}";
    let mut yaml =
        language_job(storage, data, steps, 10).replace("batch_size: 16", "batch_size: 12");
    for line in gang.lines() {
        yaml += &format!("    {line}\n");
    }
    yaml
}

/// A real S3-compatible server (moto, installed by scripts/setup) on a loopback port.
pub struct S3Server {
    /// The server's process (pause it with `signal("-STOP")`).
    pub process: Process,
    pub endpoint: String,
}

impl S3Server {
    pub fn start(logs: &Path) -> Self {
        let log = log_file(logs, "moto.log");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting moto_server (scripts/setup installs it; source scripts/env.sh)");
        let port = port_in_log(
            &logs.join("moto.log"),
            "Running on http://127.0.0.1:",
            "moto",
        );
        Self {
            process: Process {
                child,
                name: "moto".into(),
            },
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    /// What a client needs to reach this server, as `AWS_*` settings.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Creates a bucket (path-style `PUT /bucket`; moto accepts it unsigned).
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        let host = self.endpoint.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(host).unwrap();
        write!(stream, "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "creating bucket {bucket}: {answer}"
        );
    }
}

/// The venv's Python (scripts/setup made it, with torch), for the PyTorch cross-checks.
pub fn python() -> PathBuf {
    std::env::var("OUTLOUD_VENV")
        .map(|v| PathBuf::from(v).join("bin/python"))
        .unwrap_or_else(|_| PathBuf::from("python3"))
}

/// A plain HTTP/1.0 GET (no chunked answers); returns (status line, body).
pub fn http_get(host_port: &str, path: &str) -> std::io::Result<(String, String)> {
    http_get_with(host_port, path, &[])
}

/// [`http_get`] with request headers.
pub fn http_get_with(
    host_port: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(String, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(host_port)?;
    let headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {host_port}\r\n{headers}\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    Ok((
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    ))
}

/// Starts a process that is killed when the returned handle drops.
pub fn spawn(program: &str, args: &[&str], logs: &Path, name: &str) -> Process {
    let mut command = Command::new(program);
    command.args(args);
    spawn_logged(command, logs, name)
}

/// Starts our binary `name` with `args` and `env` (and no token from this environment).
pub fn spawn_with_env(
    binary: &str,
    args: &[String],
    env: Vec<(String, String)>,
    logs: &Path,
    name: &str,
) -> Process {
    let mut command = Command::new(bin(binary));
    command.args(args).envs(env).env_remove("OUTLOUD_TOKEN");
    spawn_logged(command, logs, name)
}

/// Starts `command` with its output in `logs/<name>.log`.
fn spawn_logged(mut command: Command, logs: &Path, name: &str) -> Process {
    let log = log_file(logs, &format!("{name}.log"));
    let child = command
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("starting {command:?}: {e} (scripts/setup installs what tests run)")
        });
    Process {
        child,
        name: name.into(),
    }
}

/// The port a server bound to port 0 says it got: the number after `marker` in its log.
pub fn port_in_log(log: &Path, marker: &str, what: &str) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let found = text.split(marker).nth(1).and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        });
        if let Some(port) = found {
            return port;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not say where it listens:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A temporary directory holding a coordinator's state, storage and logs; the
/// coordinator; and a client connected to it.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub coordinator: Coordinator,
    pub connection: Connection,
}

impl Cluster {
    /// What the coordinator answers when `worker_id` commits `output` under `lease`,
    /// a call the test expects refused.
    pub async fn refused_commit(
        &self,
        worker_id: String,
        lease: pb::LeaseRef,
        output: String,
    ) -> tonic::Status {
        let late = pb::CompleteTaskRequest {
            worker_id,
            lease: Some(lease),
            output,
            ..Default::default()
        };
        let answer = self.connection.workers().complete_task(late).await;
        answer.expect_err("the commit was accepted")
    }

    pub async fn start(lease_timeout_ms: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let coordinator = Coordinator::start(&dir.path().join("state"), 0, lease_timeout_ms, None);
        let connection = connect(&coordinator.url, None).await;
        Self {
            dir,
            coordinator,
            connection,
        }
    }

    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    pub fn worker(&self, name: &str) -> Process {
        start_worker(&self.coordinator.url, &self.logs(), name, None)
    }

    pub fn workers(&self, n: usize) -> Vec<Process> {
        (0..n).map(|i| self.worker(&format!("w{i}"))).collect()
    }

    pub async fn submit(&self, yaml: &str) -> String {
        submit(&self.connection, yaml, self.dir.path()).await
    }

    pub async fn wait(&self, id: &str, timeout: Duration, done: impl Fn(&Job) -> bool) -> Job {
        wait_until(&self.connection, id, timeout, done).await
    }
}
