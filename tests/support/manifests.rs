//! Reading the Kubernetes manifests in deploy/k8s as the tests of deploy/ do: render an
//! overlay with `kubectl kustomize`, validate it with `kubernetes-validate`, find its
//! objects and containers, and turn a container's command line, environment and mounts
//! into ones that run on this machine.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use serde_yaml::Value;

use super::bin;

pub const OVERLAYS: [&str; 3] = ["cpu-dev", "gpu", "gpu-cert-manager"];

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A tool from the cache's bin folder or the venv (`scripts/setup` installs both).
pub fn tool(name: &str) -> Command {
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
pub fn render(overlay: &str) -> (String, Vec<Value>) {
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
pub fn validate(yaml: &str) -> (bool, String) {
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
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
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

pub fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// The containers of every workload, with their object's kind and name.
pub fn containers(objects: &[Value]) -> Vec<(String, &Value)> {
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

pub fn args_of(container: &Value) -> Vec<String> {
    let args = container["args"].as_sequence().into_iter().flatten();
    args.map(|a| str_of(a).to_string()).collect()
}

/// The long flags a help text lists, and the environment variables it reads.
pub fn help(binary: &str, subcommand: Option<&str>) -> (BTreeSet<String>, BTreeSet<String>) {
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
pub fn binary_of(container: &Value) -> Option<&'static str> {
    let image = str_of(&container["image"]);
    let name = image.rsplit('/').next()?.split(':').next()?;
    match name {
        "outloud-coordinator" => Some("outloud"),
        "outloud-worker" => Some("outloud-worker"),
        _ => None,
    }
}

/// Replaces `$(NAME)` in `arg` with what `values` says.
pub fn expand(arg: &str, values: &BTreeMap<String, String>) -> String {
    let mut arg = arg.to_string();
    for (name, value) in values {
        arg = arg.replace(&format!("$({name})"), value);
    }
    arg
}

/// A container's environment: its literal values, its ConfigMap references and the
/// Secrets it takes whole, resolved from the rendered objects.
pub fn environment(objects: &[Value], c: &Value) -> BTreeMap<String, String> {
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
pub fn mounts(c: &Value, root: &Path) -> Vec<(String, PathBuf)> {
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
pub fn localize(arg: &str, mounted: &[(String, PathBuf)], local: &[(String, String)]) -> String {
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
pub fn run_here(
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
