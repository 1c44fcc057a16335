//! What deploy/ promises, checked without a cluster or a container engine: every
//! kustomize overlay renders and passes the Kubernetes schemas in strict mode (and a
//! broken object does not); the overlays differ as intended; every flag, environment
//! variable, file and port the manifests and Dockerfiles name is one the binaries and
//! the repository have; Prometheus finds every pod that serves metrics. The rehearsal of
//! the manifests on loopback is `tests/rehearsal.rs`.

mod support;

use std::collections::BTreeSet;

use serde_yaml::Value;
use support::manifests::*;

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
                .any(|a| a.ends_with(&format!(":{port}"))
                    && (a.contains("--metrics-listen") || a.contains("--http"))),
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
