//! Admission: everything checked before a job is accepted. The spec must parse and make
//! sense ([`spec::parse`]), and every data source it reads must exist in storage.

use outloud_core::spec::{self, JobSpec, Locator, SpecErrors};
use outloud_core::storage::{Location, StorageError};

/// Parses, checks and resolves a spec against `working_dir`; then looks for its data.
pub async fn admit(
    yaml: &str,
    source_name: &str,
    working_dir: &str,
) -> Result<JobSpec, SpecErrors> {
    let mut spec = spec::parse(yaml, source_name)?;
    let locator = Locator::new(yaml);
    if let Err(message) = spec.resolve(working_dir) {
        return Err(SpecErrors(vec![locator.error(
            source_name,
            "storage",
            message,
        )]));
    }
    let mut problems = Vec::new();
    for (i, source) in spec.data.iter().enumerate() {
        let Some(url) = source.path.as_ref().filter(|_| source.kind.has_path()) else {
            continue;
        };
        if let Err(e) = readable(url).await {
            let message = format!("data source `{}` cannot be read: {e}", source.name);
            problems.push(locator.error(source_name, &format!("data[{i}].path"), message));
        }
    }
    let benchmarks = spec.evaluation.iter().flat_map(|e| &e.benchmarks);
    for (i, source) in benchmarks.enumerate() {
        let paths = [("path", &source.path), ("images", &source.images)];
        for (field, url) in paths
            .into_iter()
            .filter_map(|(f, u)| Some((f, u.as_ref()?)))
        {
            if let Err(e) = readable(url).await {
                let message = format!("benchmark files cannot be read: {e}");
                let field = format!("evaluation.benchmarks[{i}].{field}");
                problems.push(locator.error(source_name, &field, message));
            }
        }
    }
    if !problems.is_empty() {
        return Err(SpecErrors(problems));
    }
    Ok(spec)
}

/// A file, or a folder with at least one object in it.
async fn readable(url: &str) -> Result<(), StorageError> {
    Location::open(url)?.objects().await.map(|_| ())
}
