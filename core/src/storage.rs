//! Storage locations: job roots and data sources are URLs (`file://`, `s3://`, ...)
//! opened through `object_store`, so a laptop and a cluster run the same code.
//!
//! S3-compatible stores read their settings from the usual `AWS_*` variables
//! (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_ALLOW_HTTP`, ...).

use std::path::{Component, Path as FsPath, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetResultPayload, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use url::Url;

/// Objects this large or larger are written as multipart uploads.
pub const MULTIPART_FROM: usize = 64 << 20;
/// The size of each part of a multipart upload (S3's minimum is 5 MiB).
const PART_BYTES: usize = 16 << 20;
/// Parts uploaded at once.
const PARTS_IN_FLIGHT: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("bad storage URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{url}: {source}")]
    Store {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{url}: nothing there")]
    Missing { url: String },
}

/// `location` as an absolute URL; a plain path is taken relative to `working_dir`.
pub fn absolute_url(location: &str, working_dir: &str) -> Result<Url, String> {
    if let Ok(url) = Url::parse(location)
        && url.scheme().len() > 1
    {
        return Ok(url);
    }
    let path = FsPath::new(working_dir).join(location);
    let path = normalize(&path);
    Url::from_file_path(&path).map_err(|()| format!("`{location}` is not a usable path"))
}

/// The URL `relative` (slash-separated) names below `base`.
pub fn join_url(base: &str, relative: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        relative.trim_matches('/')
    )
}

/// Removes `.` and `..` without touching the file system (the path may not exist yet).
fn normalize(path: &FsPath) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether `url` is `root` or lies below it (no `..` step out of it).
pub fn is_within(url: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    url == root
        || url
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/') && !rest.split('/').any(|p| p == ".."))
}

/// A place in an object store: the store plus a prefix inside it.
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    /// Where names read from files here may lead ([`Location::beside`]): the data
    /// source this location belongs to. `None`: anywhere in the same store.
    bound: Option<String>,
    /// Where what is read here is logged ([`Location::logging_reads`]).
    reads: Option<ReadLog>,
}

/// Every object read through a location and the locations made from it, with the
/// SHA-256 of its bytes: what a phase read of a data source, for its provenance.
#[derive(Debug, Clone, Default)]
pub struct ReadLog {
    /// URL -> SHA-256 (hex).
    read: Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
}

impl ReadLog {
    /// One SHA-256 over everything read: of `path sha256` lines in path order (so the
    /// order of reading does not matter), paths relative to the folder all of them lie
    /// in (so the same files give the same digest wherever they are stored); `None`
    /// when nothing was read.
    pub fn digest(&self) -> Option<String> {
        use sha2::Digest;
        let read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let (first, last) = (read.keys().next()?, read.keys().next_back()?);
        let common = first
            .char_indices()
            .zip(last.chars())
            .take_while(|((_, a), b)| a == b)
            .filter(|((_, a), _)| *a == '/')
            .last()
            .map_or(0, |((i, _), _)| i + 1);
        let mut hash = sha2::Sha256::new();
        for (url, sha) in read.iter() {
            hash.update(format!("{} {sha}\n", &url[common..]));
        }
        Some(hex::encode(hash.finalize()))
    }

    fn record(&self, url: &str, bytes: &[u8]) {
        use sha2::Digest;
        let sha = hex::encode(sha2::Sha256::digest(bytes));
        let mut read = self.read.lock().unwrap_or_else(|p| p.into_inner());
        read.insert(url.to_string(), sha);
    }
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Location {
    /// Opens `url` with store settings from the environment (`AWS_*`).
    pub fn open(url: &str) -> Result<Self, StorageError> {
        let options = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
        Self::open_with(url, options)
    }

    /// Opens `url` with explicit store settings (`AWS_ENDPOINT`-style keys, any case).
    pub fn open_with(
        url: &str,
        options: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, StorageError> {
        let bad = |reason: String| StorageError::BadUrl {
            url: url.into(),
            reason,
        };
        let parsed = Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let options = options
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v));
        let (store, prefix) =
            object_store::parse_url_opts(&parsed, options).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            store: Arc::from(store),
            prefix,
            url: url.trim_end_matches('/').to_string(),
            bound: None,
            reads: None,
        })
    }

    /// Opens a user's data source (a file or a folder). Paths named inside its files (a
    /// JSONL row's `image`, a manifest's pictures) resolve only within the source: its
    /// folder, or the folder its one file is in. A row naming `../../etc/passwd` or
    /// `/root/x` is refused, whatever the worker could read.
    pub async fn open_source(url: &str) -> Result<Self, StorageError> {
        let location = Self::open(url)?;
        let folder = if location.is_object().await? {
            location.url.rsplit_once('/').map_or(url, |(dir, _)| dir)
        } else {
            url
        }
        .to_string();
        Ok(location.within(&folder))
    }

    /// This location, with names read from its files confined to `folder`.
    pub fn within(mut self, folder: &str) -> Self {
        self.bound = Some(folder.trim_end_matches('/').to_string());
        self
    }

    /// This location, logging every object read through it or the locations made from
    /// it ([`Location::join`], [`Location::beside`]) in the log it answers.
    pub fn logging_reads(mut self) -> (Self, ReadLog) {
        let log = ReadLog::default();
        self.reads = Some(log.clone());
        (self, log)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The location `relative` (slash-separated) below this one.
    pub fn join(&self, relative: &str) -> Self {
        let mut prefix = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            prefix = prefix.clone().join(part);
        }
        Self {
            store: self.store.clone(),
            prefix,
            url: join_url(&self.url, relative),
            bound: self.bound.clone(),
            reads: self.reads.clone(),
        }
    }

    /// The location `relative` names from the folder this object is in, as a JSONL
    /// file's image paths do (`images/a.png`, `../pictures/b.png`).
    pub fn beside(&self, relative: &str) -> Result<Self, StorageError> {
        let bad = |reason: String| StorageError::BadUrl {
            url: format!("{} + {relative}", self.url),
            reason,
        };
        let here = Url::parse(&self.url).map_err(|e| bad(e.to_string()))?;
        let url = here.join(relative).map_err(|e| bad(e.to_string()))?;
        // The same store only: another scheme or host would be read from this one.
        if (url.scheme(), url.host_str()) != (here.scheme(), here.host_str()) {
            return Err(bad("names another store".into()));
        }
        if let Some(bound) = &self.bound
            && !is_within(url.as_str(), bound)
        {
            return Err(bad(format!("lies outside its data source `{bound}`")));
        }
        let prefix = Path::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            store: self.store.clone(),
            prefix,
            url: url.to_string(),
            bound: self.bound.clone(),
            reads: self.reads.clone(),
        })
    }

    fn error(&self, source: object_store::Error) -> StorageError {
        match source {
            object_store::Error::NotFound { .. } => StorageError::Missing {
                url: self.url.clone(),
            },
            source => StorageError::Store {
                url: self.url.clone(),
                source,
            },
        }
    }

    /// Writes `bytes` as the object here: in one request, or (remote stores) from
    /// [`MULTIPART_FROM`] bytes as a multipart upload of [`PART_BYTES`] parts, a few in
    /// flight at once (S3 takes at most 5 GB in one request, and parts retry on their
    /// own). A local file is always written whole: it has no request size limit.
    pub async fn put(&self, bytes: Vec<u8>) -> Result<(), StorageError> {
        if bytes.len() < MULTIPART_FROM || self.is_local() {
            self.store
                .put(&self.prefix, PutPayload::from(bytes))
                .await
                .map_err(|e| self.error(e))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(&self.prefix)
            .await
            .map_err(|e| self.error(e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        for part in bytes.chunks(PART_BYTES) {
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| self.error(e))?;
            writer.write(part);
        }
        writer.finish().await.map_err(|e| self.error(e))?;
        Ok(())
    }

    pub async fn get(&self) -> Result<Vec<u8>, StorageError> {
        let bytes = self.get_unlogged().await?;
        if let Some(log) = &self.reads {
            log.record(&self.url, &bytes);
        }
        Ok(bytes)
    }

    async fn get_unlogged(&self) -> Result<Vec<u8>, StorageError> {
        let result = self
            .store
            .get(&self.prefix)
            .await
            .map_err(|e| self.error(e))?;
        if let GetResultPayload::File(file, path) = result.payload {
            // A local file is read whole, off the async threads: the store's stream
            // reads it in small pieces, many times slower for a 1.2 GB checkpoint.
            let read = tokio::task::spawn_blocking(move || read_range(file, result.range));
            return match read.await {
                Ok(Ok(bytes)) => Ok(bytes),
                Ok(Err(source)) => Err(self.error(object_store::Error::Generic {
                    store: "LocalFileSystem",
                    source: format!("{}: {source}", path.display()).into(),
                })),
                Err(join) => panic!("reading {}: {join}", path.display()),
            };
        }
        let bytes = result.bytes().await.map_err(|e| self.error(e))?;
        Ok(bytes.to_vec())
    }

    /// Whether this is a local file or folder (`file://`).
    fn is_local(&self) -> bool {
        self.url.starts_with("file:")
    }

    /// Deletes the object here; nothing to delete is no error.
    pub async fn delete(&self) -> Result<(), StorageError> {
        match self.store.delete(&self.prefix).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Deletes every object below this location (a folder), in batches where the store
    /// has them; answers how many. A local folder goes whole, empty folders included.
    pub async fn delete_all(&self) -> Result<u64, StorageError> {
        let found: Vec<Path> = self.list().await?.into_iter().map(|l| l.prefix).collect();
        let paths = futures::stream::iter(found.into_iter().map(Ok)).boxed();
        let deleted: Vec<Path> = self
            .store
            .delete_stream(paths)
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        if self.is_local()
            && let Ok(url) = Url::parse(&self.url)
            && let Ok(folder) = url.to_file_path()
        {
            match std::fs::remove_dir_all(&folder) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(self.error(object_store::Error::Generic {
                        store: "local",
                        source: Box::new(e),
                    }));
                }
            }
        }
        Ok(deleted.len() as u64)
    }

    /// Whether an object stands exactly here.
    pub async fn is_object(&self) -> Result<bool, StorageError> {
        match self.store.head(&self.prefix).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            // A local directory answers head() with an error of its own.
            Err(_) if self.is_local() => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Whether anything is here: an object, or one below. Reads at most the first entry
    /// of a listing, so a client naming a huge tree costs one step, not a walk.
    pub async fn exists(&self) -> Result<bool, StorageError> {
        if self.is_object().await? {
            return Ok(true);
        }
        let mut listing = self.store.list(Some(&self.prefix));
        match listing.try_next().await {
            Ok(first) => Ok(first.is_some()),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// Objects below this location, as locations, sorted by name.
    pub async fn list(&self) -> Result<Vec<Location>, StorageError> {
        let mut metas: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        let base = self.prefix.as_ref().len();
        Ok(metas
            .into_iter()
            .map(|meta| {
                let relative = meta.location.as_ref()[base..].trim_start_matches('/');
                self.join(relative)
            })
            .collect())
    }

    /// The object here, or the objects below it when this names a folder.
    pub async fn objects(&self) -> Result<Vec<Location>, StorageError> {
        if self.is_object().await? {
            return Ok(vec![self.clone()]);
        }
        let found = self.list().await?;
        if found.is_empty() {
            return Err(StorageError::Missing {
                url: self.url.clone(),
            });
        }
        Ok(found)
    }
}

/// The bytes of `range` of `file`.
fn read_range(mut file: std::fs::File, range: std::ops::Range<u64>) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(range.start))?;
    let mut bytes = Vec::with_capacity((range.end - range.start) as usize);
    file.take(range.end - range.start).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_resolve_against_the_working_dir() {
        let url = absolute_url("../data/./x.txt", "/home/me/jobs").unwrap();
        assert_eq!(url.as_str(), "file:///home/me/data/x.txt");
        let url = absolute_url("s3://bucket/root", "/anywhere").unwrap();
        assert_eq!(url.as_str(), "s3://bucket/root");
    }

    /// A `file://` location on a fresh temporary folder.
    fn temp_root(dir: &tempfile::TempDir) -> Location {
        let url = absolute_url(".", dir.path().to_str().unwrap()).unwrap();
        Location::open(url.as_str()).unwrap()
    }

    #[tokio::test]
    async fn a_read_log_digests_what_was_read_wherever_it_lies() {
        let digest = |order: [&'static str; 3], folder: &'static str| async move {
            let dir = tempfile::tempdir().unwrap();
            let root = temp_root(&dir).join(folder);
            for (name, bytes) in [("rows.jsonl", "{}"), ("img/a.png", "a"), ("img/b.png", "b")] {
                root.join(name).put(bytes.into()).await.unwrap();
            }
            let (file, log) = root.join("rows.jsonl").logging_reads();
            for name in order {
                let at = if name == "rows.jsonl" {
                    file.clone()
                } else {
                    file.beside(name).unwrap()
                };
                at.get().await.unwrap();
            }
            log.digest().unwrap()
        };
        let one = digest(["rows.jsonl", "img/a.png", "img/b.png"], "x").await;
        assert_eq!(
            one,
            digest(["img/b.png", "rows.jsonl", "img/a.png"], "elsewhere/y").await
        );
        assert_ne!(
            one,
            digest(["rows.jsonl", "img/a.png", "img/a.png"], "x").await
        );
        assert_eq!(ReadLog::default().digest(), None);
    }

    #[tokio::test]
    async fn put_get_and_list_through_a_file_url() {
        let dir = tempfile::tempdir().unwrap();
        let root = temp_root(&dir);
        root.join("a/one.txt").put(b"1".to_vec()).await.unwrap();
        root.join("a/two.txt").put(b"22".to_vec()).await.unwrap();
        assert_eq!(root.join("a/two.txt").get().await.unwrap(), b"22");
        let names: Vec<String> = root
            .join("a")
            .objects()
            .await
            .unwrap()
            .iter()
            .map(|l| l.url().to_string())
            .collect();
        assert_eq!(names.len(), 2);
        assert!(names[0].ends_with("/a/one.txt"), "{names:?}");
        let beside = root.join("a/one.txt").beside("../a/two.txt").unwrap();
        assert_eq!(beside.get().await.unwrap(), b"22");
        assert!(beside.url().ends_with("/a/two.txt"), "{}", beside.url());
        assert!(matches!(
            root.join("nothing").objects().await,
            Err(StorageError::Missing { .. })
        ));
    }

    #[tokio::test]
    async fn names_read_from_a_data_source_stay_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = temp_root(&dir);
        root.join("secret.txt").put(b"s".to_vec()).await.unwrap();
        root.join("set/images/a.png")
            .put(b"a".to_vec())
            .await
            .unwrap();
        root.join("set/rows.jsonl")
            .put(b"{}".to_vec())
            .await
            .unwrap();
        // A source that is a folder, and one that is a file: both bound to the folder.
        let in_folder = Location::open_source(root.join("set").url()).await.unwrap();
        let file = Location::open_source(root.join("set/rows.jsonl").url())
            .await
            .unwrap();
        for file in [in_folder.join("rows.jsonl"), file] {
            assert!(file.beside("images/a.png").is_ok());
            for escape in [
                "../secret.txt",
                "images/../../secret.txt",
                "/etc/passwd",
                "file:///etc/passwd",
                "s3://bucket/x",
                "%2e%2e/secret.txt",
            ] {
                let refused = file.beside(escape);
                assert!(refused.is_err(), "{file:?}: {escape} -> {refused:?}");
            }
        }
        // Unbounded locations (the job's own storage) still refuse another store.
        assert!(root.join("set/rows.jsonl").beside("s3://bucket/x").is_err());
        assert!(root.join("set/rows.jsonl").beside("../secret.txt").is_ok());
        assert!(root.exists().await.unwrap());
        assert!(!root.join("none").exists().await.unwrap());
    }
}
