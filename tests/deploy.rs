//! What deploy/ promises, checked without a cluster or a container engine: every
//! kustomize overlay renders and passes the Kubernetes schemas in strict mode (and a
//! broken object does not); the overlays differ as intended; every flag, environment
//! variable, file and port the manifests and Dockerfiles name is one the binaries and
//! the repository have; and a rehearsal runs the coordinator, two workers and the
//! submit Job with the command lines, environment and probes the rendered manifests
//! give them, swapping only what a cluster provides (service names, fixed ports,
//! mounted Secrets, the in-cluster S3 store) for loopback equivalents.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use serde_yaml::Value;
use support::*;

const OVERLAYS: [&str; 3] = ["cpu-dev", "gpu", "gpu-cert-manager"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool from the cache's bin folder or the venv (`scripts/setup` installs both).
fn tool(name: &str) -> Command {
    let cache = std::env::var("OUTLOUD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/outloud"));
    let found = [
        cache.join("bin").join(name),
        cache.join("venv/bin").join(name),
    ]
    .into_iter()
    .find(|p| p.exists())
    .unwrap_or_else(|| {
        panic!(
            "{name} not found under {} (run scripts/setup)",
            cache.display()
        )
    });
    Command::new(found)
}

/// `kubectl kustomize` of an overlay: its YAML, and the objects in it.
fn render(overlay: &str) -> (String, Vec<Value>) {
    let dir = repo().join("deploy/k8s/overlays").join(overlay);
    let out = tool("kubectl").arg("kustomize").arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "{overlay}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let objects = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap())
        .collect();
    (text, objects)
}

/// `kubernetes-validate --strict` of `yaml`: whether it passed, and what it said.
fn validate(yaml: &str) -> (bool, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), yaml).unwrap();
    let out = tool("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.35.0"])
        .arg(file.path())
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success() && !said.contains("ERROR"), said)
}

/// The object of `kind` named `name`, or generated from that name (kustomize's
/// generators add a hash of the content: `outloud-user-token-5fk2m8b9hc`).
fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let named = |o: &Value| {
        let actual = str_of(&o["metadata"]["name"]);
        actual == name
            || actual
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|hash| hash.len() == 10 && !hash.contains('-'))
    };
    objects
        .iter()
        .find(|o| o["kind"] == kind && named(o))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The containers of every workload, with their object's kind and name.
fn containers(objects: &[Value]) -> Vec<(String, &Value)> {
    let mut found = Vec::new();
    for o in objects {
        let pod = match str_of(&o["kind"]) {
            "StatefulSet" | "Deployment" | "Job" => &o["spec"]["template"]["spec"],
            _ => continue,
        };
        for c in pod["containers"].as_sequence().into_iter().flatten() {
            let what = format!(
                "{}/{} {}",
                str_of(&o["kind"]),
                str_of(&o["metadata"]["name"]),
                str_of(&c["name"])
            );
            found.push((what, c));
        }
    }
    found
}

fn args_of(container: &Value) -> Vec<String> {
    let args = container["args"].as_sequence().into_iter().flatten();
    args.map(|a| str_of(a).to_string()).collect()
}

#[test]
fn every_overlay_renders_and_passes_the_schemas_strictly_and_a_broken_object_fails() {
    for overlay in OVERLAYS {
        let (yaml, objects) = render(overlay);
        let (passed, said) = validate(&yaml);
        assert!(passed, "{overlay}:\n{said}");
        assert!(objects.len() >= 9, "{overlay}: {} objects", objects.len());
    }
    // A misspelt field in one object: strict validation refuses the whole rendering.
    let (yaml, _) = render("cpu-dev");
    let broken = yaml.replacen(
        "terminationGracePeriodSeconds:",
        "terminationGracePeriodSecond:",
        1,
    );
    assert_ne!(broken, yaml);
    let (passed, said) = validate(&broken);
    assert!(!passed, "a broken object passed:\n{said}");
    assert!(said.contains("terminationGracePeriodSecond"), "{said}");
}

#[test]
fn the_overlays_differ_as_intended() {
    let (_, dev) = render("cpu-dev");
    let (_, gpu) = render("gpu");
    let worker = |objects: &[Value]| find(objects, "Deployment", "outloud-worker").clone();
    let (dev_worker, gpu_worker) = (worker(&dev), worker(&gpu));
    let container = |w: &Value| w["spec"]["template"]["spec"]["containers"][0].clone();
    let gpus = |w: &Value| container(w)["resources"]["limits"]["nvidia.com/gpu"].as_u64();
    assert_eq!(gpus(&gpu_worker), Some(1), "one GPU per worker process");
    assert_eq!(gpus(&dev_worker), None);
    assert!(args_of(&container(&gpu_worker)).contains(&"--device=cuda".to_string()));
    assert!(args_of(&container(&dev_worker)).contains(&"--device=cpu".to_string()));
    assert_eq!(dev_worker["spec"]["replicas"].as_u64(), Some(2));
    assert_eq!(gpu_worker["spec"]["replicas"].as_u64(), Some(4));
    let claim = |objects: &[Value]| {
        find(objects, "StatefulSet", "outloud-coordinator")["spec"]["volumeClaimTemplates"][0]["spec"].clone()
    };
    assert_eq!(claim(&dev)["storageClassName"], "local-path");
    assert!(
        claim(&gpu)["storageClassName"].is_null(),
        "the cluster's default class"
    );
    assert_eq!(claim(&gpu)["resources"]["requests"]["storage"], "20Gi");
    // The S3 store and generated credentials are the dev overlay's only.
    find(&dev, "Deployment", "outloud-s3");
    assert!(!gpu.iter().any(|o| o["metadata"]["name"] == "outloud-s3"));
    assert!(
        !gpu.iter().any(|o| o["kind"] == "Secret"),
        "GPU clusters bring their own Secrets"
    );
    let namespaces = |objects: &[Value]| -> BTreeSet<String> {
        objects
            .iter()
            .filter_map(|o| o["metadata"]["namespace"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(
        namespaces(&dev),
        BTreeSet::from(["outloud-dev".to_string()])
    );
    assert_eq!(namespaces(&gpu), BTreeSet::from(["outloud".to_string()]));
}

#[test]
fn prometheus_finds_every_pod_that_serves_metrics_on_the_port_it_serves() {
    let config =
        std::fs::read_to_string(repo().join("deploy/observability/prometheus.yml")).unwrap();
    for wanted in [
        "prometheus_io_scrape",
        "prometheus_io_port",
        "app_kubernetes_io_name",
    ] {
        assert!(config.contains(wanted), "the scrape config reads {wanted}");
    }
    let (_, objects) = render("gpu");
    for (kind, name, port) in [
        ("StatefulSet", "outloud-coordinator", 9090),
        ("Deployment", "outloud-worker", 9100),
    ] {
        let template = &find(&objects, kind, name)["spec"]["template"];
        let annotations = &template["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{name}");
        assert_eq!(
            annotations["prometheus.io/port"],
            port.to_string().as_str(),
            "{name}"
        );
        let container = &template["spec"]["containers"][0];
        assert!(
            args_of(container)
                .iter()
                .any(|a| a.ends_with(&format!(":{port}")) && a.contains("metrics-listen")),
            "{name} serves metrics on {port}"
        );
    }
}

#[test]
fn the_job_each_overlay_submits_is_valid_and_inside_the_allowed_roots() {
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        let job = str_of(&find(&objects, "ConfigMap", "outloud-job")["data"]["job.yaml"]);
        let spec = outloud_core::spec::parse(job, "job.yaml")
            .unwrap_or_else(|e| panic!("{overlay}: the job spec is refused: {e}"));
        let roots = &find(&objects, "ConfigMap", "outloud-roots")["data"];
        let within =
            |url: &str, root: &str| outloud_core::storage::is_within(url, str_of(&roots[root]));
        assert!(
            within(&spec.storage, "storage-root"),
            "{overlay}: {}",
            spec.storage
        );
        for path in spec.data.iter().filter_map(|d| d.path.as_deref()) {
            assert!(within(path, "data-root"), "{overlay}: {path}");
        }
        let phases: BTreeSet<_> = spec.phases.iter().map(|p| p.kind.name()).collect();
        assert_eq!(phases.len(), 4, "{overlay}: all four phases");
    }
}

/// The long flags a help text lists, and the environment variables it reads.
fn help(binary: &str, subcommand: Option<&str>) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut command = Command::new(bin(binary));
    command.args(subcommand).arg("--help");
    let text = String::from_utf8(command.output().unwrap().stdout).unwrap();
    let flags = text
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches([',', '.']).to_string())
        .collect();
    let env = text
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_string)
        .collect();
    (flags, env)
}

/// The binary a container runs, from its image.
fn binary_of(container: &Value) -> Option<&'static str> {
    let image = str_of(&container["image"]);
    let name = image.rsplit('/').next()?.split(':').next()?;
    match name {
        "outloud-coordinator" => Some("outloud"),
        "outloud-worker" => Some("outloud-worker"),
        _ => None,
    }
}

#[test]
fn the_manifests_pass_only_flags_variables_files_and_ports_the_binaries_take() {
    for overlay in OVERLAYS {
        let (_, objects) = render(overlay);
        let mut checked = 0;
        for (what, c) in containers(&objects) {
            let Some(binary) = binary_of(c) else { continue };
            checked += 1;
            let args = args_of(c);
            let subcommand = args
                .iter()
                .find(|a| !a.starts_with("--"))
                .map(String::as_str);
            let (global, global_env) = help(binary, None);
            let (own, own_env) = match (binary, subcommand) {
                ("outloud", Some(sub)) => help(binary, Some(sub)),
                _ => (BTreeSet::new(), BTreeSet::new()),
            };
            for arg in args.iter().filter(|a| a.starts_with("--")) {
                let flag = arg.split('=').next().unwrap();
                assert!(
                    global.contains(flag) || own.contains(flag),
                    "{overlay} {what}: `{binary}` takes no {flag}"
                );
            }
            // Every variable is one a binary reads, or feeds an argument, or is the log
            // filter every binary reads.
            let joined = args.join(" ");
            for var in c["env"].as_sequence().into_iter().flatten() {
                let name = str_of(&var["name"]);
                let used = global_env.contains(name)
                    || own_env.contains(name)
                    || joined.contains(&format!("$({name})"))
                    || name == "RUST_LOG";
                assert!(used, "{overlay} {what}: nothing reads {name}");
            }
            // Files the arguments name lie in what the container mounts.
            let mounts: Vec<&str> = c["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|m| str_of(&m["mountPath"]))
                .collect();
            for path in args
                .iter()
                .filter_map(|a| a.split_once("=/").map(|(_, p)| format!("/{p}")))
            {
                assert!(
                    mounts.iter().any(|m| path.starts_with(m)),
                    "{overlay} {what}: {path} is not mounted"
                );
            }
            // Ports the container declares are the ones its arguments listen on.
            for port in c["ports"].as_sequence().into_iter().flatten() {
                let number = port["containerPort"].as_u64().unwrap();
                assert!(
                    joined.contains(&format!(":{number}")),
                    "{overlay} {what}: nothing listens on {number}"
                );
            }
        }
        assert_eq!(checked, 3, "{overlay}: coordinator, worker, submit");
        // Object-storage credentials are settings object_store reads.
        for secret in objects.iter().filter(|o| {
            o["kind"] == "Secret" && o["metadata"]["name"] == "outloud-storage-credentials"
        }) {
            for key in secret["data"].as_mapping().unwrap().keys() {
                let key = str_of(key).to_ascii_lowercase();
                key.parse::<object_store::aws::AmazonS3ConfigKey>()
                    .unwrap_or_else(|_| panic!("object_store reads no {key}"));
            }
        }
    }
}

#[test]
fn the_dockerfiles_name_only_what_the_repository_and_binaries_have() {
    let cargo = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let version = cargo
        .split("version = \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let setup = std::fs::read_to_string(repo().join("scripts/setup")).unwrap();
    let torch = setup
        .split("TORCH_VERSION=")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap();
    let kustomization =
        std::fs::read_to_string(repo().join("deploy/k8s/base/kustomization.yaml")).unwrap();
    for (file, binary, package) in [
        ("coordinator.Dockerfile", "outloud", "outloud-coordinator"),
        ("worker.Dockerfile", "outloud-worker", "outloud-worker"),
    ] {
        let path = repo().join("deploy/docker").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<String> = text
            .replace("\\\n", " ")
            .lines()
            .map(str::to_string)
            .collect();
        for line in lines
            .iter()
            .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
        {
            let words: Vec<&str> = line.split_whitespace().collect();
            for source in &words[1..words.len() - 1] {
                assert!(
                    repo().join(source).exists(),
                    "{file}: COPY {source}: not in the repository"
                );
            }
        }
        assert!(
            text.contains(&format!("-p {package} --bin {binary}")),
            "{file} builds {binary}"
        );
        assert!(
            repo()
                .join(package.trim_start_matches("outloud-"))
                .join("Cargo.toml")
                .exists()
        );
        let copied = format!("/src/target/release/{binary} /usr/local/bin/{binary}");
        assert!(text.contains(&copied), "{file} installs {binary}");
        assert!(
            text.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")),
            "{file}"
        );
        assert!(
            text.contains(&format!("ARG OUTLOUD_VERSION={version}")),
            "{file}: version {version}"
        );
        assert!(
            text.contains("LABEL org.opencontainers.image.title")
                && text.contains("org.opencontainers.image.version=\"${OUTLOUD_VERSION}\"")
        );
        assert!(text.contains("USER 10001"), "{file}: a non-root user");
        assert!(
            kustomization.contains(&format!("newTag: {version}")),
            "images tagged {version}"
        );
        // CMD's flags are flags of the binary (and subcommand) it runs.
        let cmd = lines.iter().find(|l| l.starts_with("CMD ")).unwrap();
        let cmd: Vec<String> = serde_json::from_str(cmd.trim_start_matches("CMD ")).unwrap();
        let subcommand = cmd
            .iter()
            .find(|a| !a.starts_with("--"))
            .map(String::as_str)
            .filter(|_| binary == "outloud");
        let (mut flags, _) = help(binary, subcommand);
        flags.extend(help(binary, None).0);
        for flag in cmd.iter().filter(|a| a.starts_with("--")) {
            assert!(
                flags.contains(flag.as_str()),
                "{file}: {binary} takes no {flag}"
            );
        }
        // Ports it exposes are the ones CMD listens on.
        for line in lines.iter().filter(|l| l.starts_with("EXPOSE ")) {
            for port in line.split_whitespace().skip(1) {
                assert!(
                    cmd.iter().any(|a| a.ends_with(&format!(":{port}"))),
                    "{file}: EXPOSE {port}"
                );
            }
        }
        // Its ignore file lets in exactly what COPY takes, and those exist.
        let ignore = std::fs::read_to_string(
            repo()
                .join("deploy/docker")
                .join(format!("{file}.dockerignore")),
        )
        .unwrap();
        for kept in ignore.lines().filter_map(|l| l.strip_prefix('!')) {
            assert!(
                repo().join(kept).exists(),
                "{file}.dockerignore keeps {kept}"
            );
            assert!(
                lines
                    .iter()
                    .any(|l| l.starts_with("COPY ") && l.contains(kept.trim_end_matches('/'))),
                "{file} copies {kept}"
            );
        }
    }
    let worker = std::fs::read_to_string(repo().join("deploy/docker/worker.Dockerfile")).unwrap();
    assert!(
        worker.contains(&format!("ARG TORCH_VERSION={torch}")),
        "the worker's libtorch is scripts/setup's {torch}"
    );
    assert!(worker.contains("\"torch==${TORCH_VERSION}\""));
}

/// Replaces `$(NAME)` in `arg` with what `values` says.
fn expand(arg: &str, values: &BTreeMap<String, String>) -> String {
    let mut arg = arg.to_string();
    for (name, value) in values {
        arg = arg.replace(&format!("$({name})"), value);
    }
    arg
}

/// A container's environment: its literal values, its ConfigMap references and the
/// Secrets it takes whole, resolved from the rendered objects.
fn environment(objects: &[Value], c: &Value) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for source in c["envFrom"].as_sequence().into_iter().flatten() {
        let secret = find(objects, "Secret", str_of(&source["secretRef"]["name"]));
        for (key, value) in secret["data"].as_mapping().unwrap() {
            let value = base64::engine::general_purpose::STANDARD
                .decode(str_of(value))
                .unwrap();
            env.insert(str_of(key).to_string(), String::from_utf8(value).unwrap());
        }
    }
    for var in c["env"].as_sequence().into_iter().flatten() {
        let value = if let Some(v) = var["value"].as_str() {
            v.to_string()
        } else if let Some(key) = var["valueFrom"]["configMapKeyRef"].as_mapping() {
            let map = find(objects, "ConfigMap", str_of(&key[&Value::from("name")]));
            str_of(&map["data"][str_of(&key[&Value::from("key")])]).to_string()
        } else if var["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP" {
            "127.0.0.1".to_string()
        } else {
            panic!("unknown env source {var:?}");
        };
        env.insert(str_of(&var["name"]).to_string(), value);
    }
    env
}

/// Where each of a container's mounts lands here: a folder per volume under `root`.
fn mounts(c: &Value, root: &Path) -> Vec<(String, PathBuf)> {
    c["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                str_of(&m["mountPath"]).to_string(),
                root.join(str_of(&m["name"])),
            )
        })
        .collect()
}

/// An argument with mounted paths, service names and fixed ports made local: a path
/// (what follows `=`) is moved from the deepest mount it lies in to that mount's folder.
fn localize(arg: &str, mounted: &[(String, PathBuf)], local: &[(String, String)]) -> String {
    let mut arg = arg.to_string();
    if let Some((flag, path)) = arg.split_once("=/") {
        let path = format!("/{path}");
        let deepest = mounted
            .iter()
            .filter(|(mount, _)| path.starts_with(mount.as_str()))
            .max_by_key(|(mount, _)| mount.len());
        if let Some((mount, here)) = deepest {
            arg = format!("{flag}={}{}", here.display(), &path[mount.len()..]);
        }
    } else if let Some((mount, here)) = mounted
        .iter()
        .find(|(mount, _)| arg.starts_with(mount.as_str()))
    {
        arg = format!("{}{}", here.display(), &arg[mount.len()..]);
    }
    for (cluster, here) in local {
        arg = arg.replace(cluster.as_str(), here);
    }
    arg
}

/// A container's command line and environment as they run here: `$(VAR)` expanded,
/// mounts moved under `volumes`, and `local` replacing what the cluster names.
fn run_here(
    objects: &[Value],
    c: &Value,
    volumes: &Path,
    local: &[(String, String)],
) -> (Vec<String>, BTreeMap<String, String>) {
    let env = environment(objects, c);
    let mounted = mounts(c, volumes);
    let args = args_of(c)
        .iter()
        .map(|a| localize(&expand(a, &env), &mounted, local))
        .collect();
    (args, env)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_manifests_contract_runs_a_job_here() {
    let _one_at_a_time = exclusive().await;
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let (_, objects) = render("cpu-dev");
    let coordinator = find(&objects, "StatefulSet", "outloud-coordinator");
    let coordinator = &coordinator["spec"]["template"]["spec"]["containers"][0];
    let worker = &find(&objects, "Deployment", "outloud-worker")["spec"]["template"]["spec"]["containers"]
        [0];
    let submitter =
        &find(&objects, "Job", "outloud-submit")["spec"]["template"]["spec"]["containers"][0];

    // What the cluster provides: the Secrets' files (a test CA and certificate for
    // 127.0.0.1), the volumes, the S3 store with its buckets.
    let volumes = dir.path().join("volumes");
    let tls = volumes.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let (ca, cert, key) = test_ca(&tls);
    std::fs::rename(&ca, tls.join("ca.crt")).unwrap();
    std::fs::rename(&cert, tls.join("tls.crt")).unwrap();
    std::fs::rename(&key, tls.join("tls.key")).unwrap();
    for (volume, secret) in [
        ("user-token", "outloud-user-token"),
        ("worker-token", "outloud-worker-token"),
    ] {
        let data = &find(&objects, "Secret", secret)["data"]["token"];
        let token = base64::engine::general_purpose::STANDARD
            .decode(str_of(data))
            .unwrap();
        std::fs::create_dir_all(volumes.join(volume)).unwrap();
        std::fs::write(volumes.join(volume).join("token"), token).unwrap();
    }
    std::fs::create_dir_all(volumes.join("state")).unwrap();
    let s3 = S3Server::start(&logs);
    for bucket in ["outloud-data", "outloud-runs"] {
        s3.create_bucket(bucket);
    }
    let cluster_s3 = "http://outloud-s3:5000".to_string();

    // The coordinator, as the StatefulSet runs it, on ports bound at 0.
    let ports = [
        ("0.0.0.0:50051".to_string(), "127.0.0.1:0".to_string()),
        ("0.0.0.0:9090".to_string(), "127.0.0.1:0".to_string()),
    ];
    let (mut args, env) = run_here(&objects, coordinator, &volumes, &ports);
    assert_eq!(env["AWS_ENDPOINT"], cluster_s3);
    let address_file = dir.path().join("coordinator.addr");
    args.push(format!("--address-file={}", address_file.display()));
    let s3_env: Vec<(String, String)> = s3.env();
    let with_local_s3 = |env: BTreeMap<String, String>| -> Vec<(String, String)> {
        env.into_iter()
            .map(|(k, v)| {
                if v == cluster_s3 {
                    (k, s3.endpoint.clone())
                } else {
                    (k, v)
                }
            })
            .collect()
    };
    assert!(s3_env.iter().any(|(k, _)| k == "AWS_ENDPOINT"));
    let _coordinator = spawn_with_env("outloud", &args, with_local_s3(env), &logs, "coordinator");
    let bound: serde_json::Value = loop {
        if let Ok(text) = std::fs::read_to_string(&address_file) {
            break serde_json::from_str(&text).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (grpc, metrics) = (str_of_json(&bound["grpc"]), str_of_json(&bound["metrics"]));
    // Its probes, as kubelet would send them.
    for probe in ["readinessProbe", "livenessProbe"] {
        let path = str_of(&coordinator[probe]["httpGet"]["path"]);
        let (status, _) = http_get(&metrics, path).unwrap();
        assert!(status.contains("200"), "{probe} {path}: {status}");
    }

    // Two workers and the submit Job, their service name now the coordinator here.
    let service = [
        (
            "https://outloud-coordinator:50051".to_string(),
            format!("https://{grpc}"),
        ),
        ("0.0.0.0:9100".to_string(), "127.0.0.1:0".to_string()),
    ];
    let mut workers = Vec::new();
    for i in 0..2 {
        let (args, env) = run_here(&objects, worker, &volumes, &service);
        workers.push(spawn_with_env(
            "outloud-worker",
            &args,
            with_local_s3(env),
            &logs,
            &format!("worker-{i}"),
        ));
    }
    // Each worker serves its metrics, as Prometheus would scrape them.
    for i in 0..2 {
        let log = logs.join(format!("worker-{i}.log"));
        let port = port_in_log(&log, "worker metrics serving addr=127.0.0.1:", "worker");
        let (status, _) = http_get(&format!("127.0.0.1:{port}"), "/metrics").unwrap();
        assert!(status.contains("200"), "worker {i}: {status}");
    }
    let job = volumes.join("job");
    std::fs::create_dir_all(&job).unwrap();
    let spec = "name: rehearsal\nstorage: s3://outloud-runs/rehearsal\ndata:\n  - {name: corpus, kind: generated_text, seed: 3, words: 20000}\nmodel: {preset: tiny}\nphases:\n  - {name: language, kind: language, data: [corpus], steps: 30, checkpoint_every: 10}\n";
    std::fs::write(job.join("job.yaml"), spec).unwrap();
    let (args, _) = run_here(&objects, submitter, &volumes, &service);
    let submitted = tokio::task::spawn_blocking(move || {
        Command::new(bin("outloud"))
            .args(&args)
            .env_remove("OUTLOUD_TOKEN")
            .output()
            .unwrap()
    });
    let logs_said = || -> String {
        ["coordinator", "worker-0", "worker-1"]
            .map(|name| {
                let text = std::fs::read_to_string(logs.join(format!("{name}.log")));
                let text = text.unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("== {name}\n{}\n", tail.join("\n"))
            })
            .concat()
    };
    let submitted = tokio::time::timeout(Duration::from_secs(120), submitted).await;
    let submitted = submitted
        .unwrap_or_else(|_| panic!("the job did not finish:\n{}", logs_said()))
        .unwrap();
    let said = String::from_utf8_lossy(&submitted.stdout).into_owned()
        + &String::from_utf8_lossy(&submitted.stderr);
    assert!(
        submitted.status.success(),
        "the submit Job failed:\n{said}\n{}",
        logs_said()
    );
    assert!(said.contains("succeeded"), "{said}");
    // The job's checkpoints are in the store, under the storage root the spec named.
    let runs =
        outloud_core::storage::Location::open_with("s3://outloud-runs/rehearsal/jobs", s3.env())
            .unwrap();
    let written = runs.list().await.unwrap();
    assert!(
        written
            .iter()
            .any(|o| o.url().ends_with("/final/manifest.json")),
        "{written:?}"
    );
}

fn str_of_json(v: &serde_json::Value) -> String {
    v.as_str().unwrap().to_string()
}
