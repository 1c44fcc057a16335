//! Admission: everything checked before a job is accepted. The spec must parse within
//! the coordinator's [`Limits`] and make sense ([`spec::parse_within`]); its storage root
//! and every path it reads must lie inside the roots the coordinator allows; and each
//! path must hold something. Admission never walks a client-named tree: a path outside
//! the roots is refused before anything touches it, and a path inside is probed for one
//! entry. Workers read and check the data itself in the job's prepare step.

use outloud_core::spec::{self, JobSpec, Limits, Locator, ModelShape, SpecErrors};
use outloud_core::storage::{self, Location, StorageError, is_within};

/// What a coordinator admits.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub limits: Limits,
    /// URLs a spec may read data and benchmarks from; empty: anything the workers can.
    pub data_roots: Vec<String>,
    /// URLs a job's storage root may lie in; empty: anywhere.
    pub storage_roots: Vec<String>,
}

impl Policy {
    /// Roots as given on the command line (paths or URLs), made absolute URLs.
    pub fn with_roots(
        limits: Limits,
        data_roots: &[String],
        storage_roots: &[String],
        working_dir: &str,
    ) -> Result<Self, String> {
        let absolute = |roots: &[String]| -> Result<Vec<String>, String> {
            roots
                .iter()
                .map(|root| Ok(storage::absolute_url(root, working_dir)?.to_string()))
                .collect()
        };
        Ok(Self {
            limits,
            data_roots: absolute(data_roots)?,
            storage_roots: absolute(storage_roots)?,
        })
    }
}

/// `url` is inside one of `roots`, or says which roots it is not in.
fn confined(url: &str, roots: &[String], what: &str) -> Result<(), String> {
    if roots.is_empty() || roots.iter().any(|root| is_within(url, root)) {
        return Ok(());
    }
    Err(format!(
        "`{url}` is outside the {what} roots this coordinator allows ({})",
        roots.join(", ")
    ))
}

/// Parses, checks and resolves a spec against `working_dir`; then checks its paths.
pub async fn admit(
    yaml: &str,
    source_name: &str,
    working_dir: &str,
    policy: &Policy,
) -> Result<JobSpec, SpecErrors> {
    let mut spec = spec::parse_within(yaml, source_name, &policy.limits)?;
    let locator = Locator::new(yaml);
    let at = |field: &str, message: String| locator.error(source_name, field, message);
    if let Err(message) = spec.resolve(working_dir) {
        return Err(SpecErrors(vec![at("storage", message)]));
    }
    if let Err(message) = confined(&spec.storage, &policy.storage_roots, "storage") {
        return Err(SpecErrors(vec![at("storage", message)]));
    }
    let mut problems = Vec::new();
    for (field, url) in read_paths(&spec) {
        if let Err(message) = check_read(&url, policy).await {
            problems.push(at(&field, message));
        }
    }
    for (i, phase) in spec.phases.iter().enumerate() {
        let Some(url) = &phase.init_from else {
            continue;
        };
        if let Err(message) = check_import(url, &spec, policy).await {
            problems.push(at(&format!("phases[{i}].init_from"), message));
        }
    }
    if !problems.is_empty() {
        return Err(SpecErrors(problems));
    }
    Ok(spec)
}

/// Every path the spec reads, with its field.
fn read_paths(spec: &JobSpec) -> Vec<(String, String)> {
    let mut paths = Vec::new();
    for (i, source) in spec.data.iter().enumerate() {
        if let Some(url) = source.path.as_ref().filter(|_| source.kind.has_path()) {
            paths.push((format!("data[{i}].path"), url.clone()));
        }
    }
    let benchmarks = spec.evaluation.iter().flat_map(|e| &e.benchmarks);
    for (i, source) in benchmarks.enumerate() {
        for (name, url) in [("path", &source.path), ("images", &source.images)] {
            if let Some(url) = url {
                paths.push((format!("evaluation.benchmarks[{i}].{name}"), url.clone()));
            }
        }
    }
    paths
}

/// Inside the data roots, and something there.
async fn check_read(url: &str, policy: &Policy) -> Result<(), String> {
    confined(url, &policy.data_roots, "data")?;
    match Location::open(url)
        .map_err(|e| e.to_string())?
        .exists()
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("nothing at `{url}`")),
        Err(e) => Err(format!("`{url}` cannot be read: {e}")),
    }
}

/// A checkpoint a phase imports (`init_from`): inside the data roots, with a manifest
/// whose model is this spec's. The worker verifies every file against that manifest.
async fn check_import(url: &str, spec: &JobSpec, policy: &Policy) -> Result<(), String> {
    confined(url, &policy.data_roots, "data")?;
    let manifest_url = storage::join_url(url, "manifest.json");
    let location = Location::open(&manifest_url).map_err(|e| e.to_string())?;
    let bytes = match location.get().await {
        Ok(bytes) => bytes,
        Err(StorageError::Missing { .. }) => {
            return Err(format!(
                "no checkpoint at `{url}`: it has no manifest.json (a checkpoint folder, or a \
                 folder `outloud export` wrote)"
            ));
        }
        Err(e) => return Err(format!("`{manifest_url}` cannot be read: {e}")),
    };
    #[derive(serde::Deserialize)]
    struct Manifest {
        model: ModelShape,
    }
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| format!("`{manifest_url}` is not a checkpoint manifest: {e}"))?;
    let ours = spec.model.shape()?;
    if manifest.model != ours {
        return Err(format!(
            "the checkpoint's model is {}, this spec's is {}",
            describe(&manifest.model),
            describe(&ours)
        ));
    }
    Ok(())
}

fn describe(shape: &ModelShape) -> String {
    format!(
        "d_model {} x {} layers, {} heads, context {}, vocabulary {}",
        shape.d_model, shape.n_layers, shape.n_heads, shape.context, shape.vocab_size
    )
}
