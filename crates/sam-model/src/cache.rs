//! The model cache shared with micro_sam: named models (`vit_b`, `vit_b_lm`, ...) live in
//! `$MICROSAM_CACHEDIR/models/<name>` or, by default, `~/.cache/micro_sam/models/<name>`,
//! exactly where micro_sam puts them, so both tools share one download.
//!
//! [`resolve_checkpoint`] turns a file path or a model name into a file; [`download_model`]
//! fetches a named model from its official URL with hash verification and an atomic write.

use sha2::Digest;
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A model micro_sam knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelInfo {
    /// The name, also the file name in the cache (e.g. `vit_b_lm`).
    pub name: &'static str,
    /// The official download URL.
    pub url: &'static str,
    /// The expected hash, `xxh128:<hex>` (or `sha256:<hex>`).
    pub hash: &'static str,
}

const fn m(name: &'static str, hash: &'static str, url: &'static str) -> ModelInfo {
    ModelInfo { name, url, hash }
}

/// micro_sam's model registry: names, URLs and xxh128 hashes as in `micro_sam/util.py`
/// (`models()`, micro-sam commit 3acdcd72, 2026-08-21). Names ending in `_decoder` are the
/// instance-segmentation decoders that go with the model of the same stem.
const REGISTRY: &[ModelInfo] = &[
    // The original Segment Anything models.
    m("vit_l", "xxh128:a82beb3c660661e3dd38d999cc860e9a", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth"),
    m("vit_h", "xxh128:97698fac30bd929c2e6d8d8cc15933c2", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"),
    m("vit_b", "xxh128:6923c33df3637b6a922d7682bfc9a86b", "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"),
    // MobileSAM (vit tiny).
    m("vit_t", "xxh128:8eadbc88aeb9d8c7e0b4b60c3db48bd0", "https://owncloud.gwdg.de/index.php/s/TuDzuwVDHd1ZDnQ/download"),
    // micro_sam light-microscopy generalists.
    m("vit_l_lm", "xxh128:017f20677997d628426dec80a8018f9d", "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/idealistic-rat/1.2/files/vit_l.pt"),
    m("vit_b_lm", "xxh128:fe9252a29f3f4ea53c15a06de471e186", "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/diplomatic-bug/1.2/files/vit_b.pt"),
    m("vit_t_lm", "xxh128:72ec5074774761a6e5c05a08942f981e", "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/faithful-chicken/1.1/files/vit_t.pt"),
    // Electron-microscopy organelle models.
    m("vit_l_em_organelles", "xxh128:810b084b6e51acdbf760a993d8619f2d", "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/humorous-crab/1.2/files/vit_l.pt"),
    m("vit_b_em_organelles", "xxh128:f3bf2ed83d691456bae2c3f9a05fb438", "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/noisy-ox/1.2/files/vit_b.pt"),
    m("vit_t_em_organelles", "xxh128:253474720c497cce605e57c9b1d18fd9", "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/greedy-whale/1/files/vit_t.pt"),
    // Histopathology models.
    m("vit_b_histopathology", "xxh128:ffd1a2cd84570458b257bd95fdd8f974", "https://owncloud.gwdg.de/index.php/s/sBB4H8CTmIoBZsQ/download"),
    m("vit_l_histopathology", "xxh128:b591833c89754271023e901281dee3f2", "https://owncloud.gwdg.de/index.php/s/IZgnn1cpBq2PHod/download"),
    m("vit_h_histopathology", "xxh128:bd1856dafc156a43fb3aa705f1a6e92e", "https://owncloud.gwdg.de/index.php/s/L7AcvVz7DoWJ2RZ/download"),
    // Medical imaging.
    m("vit_b_medical_imaging", "xxh128:40169f1e3c03a4b67bff58249c176d92", "https://owncloud.gwdg.de/index.php/s/f5Ol4FrjPQWfjUF/download"),
    // Instance-segmentation (UNETR) decoders.
    m("vit_l_lm_decoder", "xxh128:2faeafa03819dfe03e7c46a44aaac64a", "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/idealistic-rat/1.2/files/vit_l_decoder.pt"),
    m("vit_b_lm_decoder", "xxh128:708b15ac620e235f90bb38612c4929ba", "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/diplomatic-bug/1.2/files/vit_b_decoder.pt"),
    m("vit_t_lm_decoder", "xxh128:3e914a5f397b0312cdd36813031f8823", "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/faithful-chicken/1.1/files/vit_t_decoder.pt"),
    m("vit_l_em_organelles_decoder", "xxh128:334877640bfdaaabce533e3252a17294", "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/humorous-crab/1.2/files/vit_l_decoder.pt"),
    m("vit_b_em_organelles_decoder", "xxh128:bb6398956a6b0132c26b631c14f95ce2", "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/noisy-ox/1.2/files/vit_b_decoder.pt"),
    m("vit_t_em_organelles_decoder", "xxh128:8f897c7bb93174a4d1638827c4dd6f44", "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/greedy-whale/1/files/vit_t_decoder.pt"),
    m("vit_b_histopathology_decoder", "xxh128:6a66194dcb6e36199cbee2214ecf7213", "https://owncloud.gwdg.de/index.php/s/KO9AWqynI7SFOBj/download"),
    m("vit_l_histopathology_decoder", "xxh128:46aab7765d4400e039772d5a50b55c04", "https://owncloud.gwdg.de/index.php/s/oIs6VSmkOp7XrKF/download"),
    m("vit_h_histopathology_decoder", "xxh128:3ed9f87e46ad5e16935bd8d722c8dc47", "https://owncloud.gwdg.de/index.php/s/1qAKxy5H0jgwZvM/download"),
    m("vit_b_medical_imaging_decoder", "xxh128:9e498b12f526f119b96c88be76e3b2ed", "https://owncloud.gwdg.de/index.php/s/ahd3ZhZl2e0RIwz/download"),
];

/// Every model micro_sam knows by name.
pub fn known_models() -> &'static [ModelInfo] {
    REGISTRY
}

/// The registry entry of a model name.
pub fn model_info(name: &str) -> Option<&'static ModelInfo> {
    REGISTRY.iter().find(|m| m.name == name)
}

/// Why a model could not be found, downloaded or verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// Neither `$MICROSAM_CACHEDIR` nor a home directory is set.
    #[error("cannot locate the model cache: set MICROSAM_CACHEDIR (or HOME)")]
    NoCacheDir,
    /// A path-like checkpoint spec names no file.
    #[error("checkpoint file {0} does not exist")]
    FileNotFound(PathBuf),
    /// The name is not a known model and not a file in the cache.
    #[error(
        "`{name}` is neither a checkpoint file nor a model in the cache ({cache_dir}){}; known \
         models: {known}", did_you_mean.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
    )]
    UnknownModel {
        /// The name asked for.
        name: String,
        /// The cache directory searched.
        cache_dir: PathBuf,
        /// The closest known model name.
        did_you_mean: Option<String>,
        /// All known names, comma-separated.
        known: String,
    },
    /// A download of a name micro_sam's registry does not know, without the URL or the hash
    /// that the registry would give.
    #[error(
        "`{name}` is not a model micro_sam knows{}, so there is no official URL and hash for \
         it: to download it anyway, give {missing} (`--url URL --hash sha256:<64 hex digits>` \
         or `xxh128:<32 hex digits>`; the hash is what the download is verified against); \
         known models: {known}",
        did_you_mean.as_ref().map(|s| format!(" (did you mean `{s}`?)")).unwrap_or_default()
    )]
    NotInRegistry {
        /// The name asked for.
        name: String,
        /// What is missing: `its URL and its expected hash`, `its URL` or `its expected hash`.
        missing: &'static str,
        /// The closest known model name.
        did_you_mean: Option<String>,
        /// All known names, comma-separated.
        known: String,
    },
    /// A known model has not been downloaded yet.
    #[error(
        "model `{name}` is not in the cache: {path} does not exist. Download it once on a \
         machine with internet access (e.g. the login node) with the download command, which \
         stores it there; or fetch {url} yourself and save it as {path}; or point \
         MICROSAM_CACHEDIR at a cache that has it"
    )]
    NotDownloaded {
        /// The model name.
        name: String,
        /// Where it is expected.
        path: PathBuf,
        /// Its official URL.
        url: String,
    },
    /// The hash string is not `xxh128:<32 hex>` or `sha256:<64 hex>`.
    #[error(
        "unsupported hash `{0}`: expected `xxh128:<32 hex digits>` or `sha256:<64 hex digits>`"
    )]
    BadHash(String),
    /// The download failed (connection, HTTP status, interrupted transfer).
    #[error("downloading {url} failed: {message}")]
    Download {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
    /// The downloaded (or cached) bytes do not have the registered hash.
    #[error(
        "{what} has hash {found}, expected {expected}: the download is corrupt or the file \
         changed upstream; nothing was kept"
    )]
    HashMismatch {
        /// The URL or file checked.
        what: String,
        /// The registered hash.
        expected: String,
        /// The hash of the received bytes.
        found: String,
    },
    /// Reading or writing the cache failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The model folder of the cache: `$MICROSAM_CACHEDIR/models` if that variable is set,
/// otherwise micro_sam's default (pooch's `os_cache("micro_sam")`): `$XDG_CACHE_HOME/micro_sam/models`
/// or `~/.cache/micro_sam/models` on Linux, `~/Library/Caches/micro_sam/models` on macOS.
pub fn model_cache_dir() -> Result<PathBuf, CacheError> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("MICROSAM_CACHEDIR") {
        return Ok(dir.join("models"));
    }
    let home = var("HOME");
    let base = if cfg!(target_os = "macos") {
        home.map(|h| h.join("Library").join("Caches"))
    } else {
        var("XDG_CACHE_HOME").or_else(|| home.map(|h| h.join(".cache")))
    };
    base.map(|b| b.join("micro_sam").join("models"))
        .ok_or(CacheError::NoCacheDir)
}

/// Resolves a checkpoint spec, a file path or a model name, against the default cache
/// ([`model_cache_dir`]).
///
/// An existing file wins. Otherwise the spec is a model name looked up as
/// `<cache>/<name>`; a known model that is not there yet is an error saying how to download
/// it (with its URL), an unknown name an error listing the known ones.
pub fn resolve_checkpoint(spec: &str) -> Result<PathBuf, CacheError> {
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    resolve_checkpoint_in(spec, &model_cache_dir()?)
}

/// [`resolve_checkpoint`] against an explicit cache folder.
pub fn resolve_checkpoint_in(spec: &str, cache_dir: &Path) -> Result<PathBuf, CacheError> {
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let looks_like_path = spec.contains(std::path::MAIN_SEPARATOR)
        || spec.contains('/')
        || [".pt", ".pth", ".safetensors", ".ckpt"]
            .iter()
            .any(|e| spec.ends_with(e));
    if looks_like_path {
        return Err(CacheError::FileNotFound(path.to_path_buf()));
    }
    let cached = cache_dir.join(spec);
    if cached.is_file() {
        return Ok(cached);
    }
    match model_info(spec) {
        Some(info) => Err(CacheError::NotDownloaded {
            name: spec.to_string(),
            path: cached,
            url: info.url.to_string(),
        }),
        None => Err(unknown_model(spec, cache_dir)),
    }
}

/// The cached instance-segmentation decoder that goes with a model (`<name>_decoder`), if the
/// registry has one. `Ok(None)` for models without a decoder; an error if it has one that is
/// not downloaded yet.
pub fn resolve_decoder_checkpoint_in(
    name: &str,
    cache_dir: &Path,
) -> Result<Option<PathBuf>, CacheError> {
    let decoder = format!("{name}_decoder");
    if model_info(&decoder).is_none() {
        return Ok(None);
    }
    resolve_checkpoint_in(&decoder, cache_dir).map(Some)
}

/// The registry name closest to `name` (a likely typo) and every registry name.
fn closest_known(name: &str) -> (Option<String>, String) {
    let did_you_mean = REGISTRY
        .iter()
        .map(|m| (strsim::levenshtein(name, m.name), m.name))
        .filter(|(d, _)| *d <= (name.len() / 3).max(2))
        .min()
        .map(|(_, n)| n.to_string());
    let known = REGISTRY
        .iter()
        .map(|m| m.name)
        .collect::<Vec<_>>()
        .join(", ");
    (did_you_mean, known)
}

fn unknown_model(name: &str, cache_dir: &Path) -> CacheError {
    let (did_you_mean, known) = closest_known(name);
    CacheError::UnknownModel {
        name: name.to_string(),
        cache_dir: cache_dir.to_path_buf(),
        did_you_mean,
        known,
    }
}

/// A streaming hash of one of the kinds the registry uses.
enum Hasher {
    Xxh128(Box<xxhash_rust::xxh3::Xxh3>),
    Sha256(sha2::Sha256),
}

/// A parsed `algorithm:hex` hash.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExpectedHash {
    algorithm: &'static str,
    hex: String,
}

impl fmt::Display for ExpectedHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

fn parse_hash(s: &str) -> Result<ExpectedHash, CacheError> {
    let (algorithm, hex) = match s.split_once(':') {
        Some(("xxh128", hex)) => ("xxh128", hex),
        Some(("sha256", hex)) => ("sha256", hex),
        // pooch treats a bare hash as sha256.
        None if s.len() == 64 => ("sha256", s),
        _ => return Err(CacheError::BadHash(s.to_string())),
    };
    let len = if algorithm == "xxh128" { 32 } else { 64 };
    if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CacheError::BadHash(s.to_string()));
    }
    Ok(ExpectedHash {
        algorithm,
        hex: hex.to_ascii_lowercase(),
    })
}

impl Hasher {
    fn new(algorithm: &str) -> Self {
        if algorithm == "xxh128" {
            Hasher::Xxh128(Box::default())
        } else {
            Hasher::Sha256(sha2::Sha256::new())
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Xxh128(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    /// Lower-case hex, as `xxh128sum` / `sha256sum` print it.
    fn hex(self) -> String {
        match self {
            Hasher::Xxh128(h) => format!("{:032x}", h.digest128()),
            Hasher::Sha256(h) => h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// Checks a file against `algorithm:hex` (`xxh128:` or `sha256:`).
pub fn verify_file_hash(path: &Path, expected: &str) -> Result<(), CacheError> {
    let expected = parse_hash(expected)?;
    let found = hash_file(path, expected.algorithm)?;
    if found == expected.hex {
        Ok(())
    } else {
        Err(CacheError::HashMismatch {
            what: path.display().to_string(),
            expected: expected.to_string(),
            found: format!("{}:{found}", expected.algorithm),
        })
    }
}

fn hash_file(path: &Path, algorithm: &str) -> Result<String, CacheError> {
    let mut file = std::fs::File::open(path).map_err(io_err(path))?;
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.hex())
}

/// Progress of a download, passed to [`DownloadOptions::progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadProgress {
    /// Bytes received so far.
    pub downloaded: u64,
    /// The total size, if the server announced it.
    pub total: Option<u64>,
}

/// Settings of [`download_model`]; `Default` downloads the registry's URL into the default cache.
#[derive(Default)]
pub struct DownloadOptions<'a> {
    /// The cache folder; [`model_cache_dir`] when `None`.
    pub cache_dir: Option<PathBuf>,
    /// Download from this URL instead of the registry's (mirrors, tests).
    pub url: Option<String>,
    /// Expect this hash (`xxh128:<hex>` or `sha256:<hex>`) instead of the registry's; required
    /// for names the registry does not know.
    pub hash: Option<String>,
    /// Called as bytes arrive.
    pub progress: Option<&'a mut dyn FnMut(DownloadProgress)>,
    /// Re-download even when a file with the right hash is already cached.
    pub force: bool,
}

impl fmt::Debug for DownloadOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DownloadOptions")
            .field("cache_dir", &self.cache_dir)
            .field("url", &self.url)
            .field("hash", &self.hash)
            .field("progress", &self.progress.is_some())
            .field("force", &self.force)
            .finish()
    }
}

/// Downloads a named model into the cache (`<cache>/<name>`) and returns its path.
///
/// The URL and hash come from micro_sam's registry ([`known_models`]) unless the options
/// override them. The bytes go to a temporary file in the cache folder, are hashed on the
/// way, and are renamed onto `<cache>/<name>` only if the hash matches: an interrupted or
/// corrupt download leaves nothing behind. A cached file with the right hash is kept and not
/// downloaded again (unless `force`). HTTP(S) proxies are taken from the usual environment
/// variables (`HTTPS_PROXY`, `ALL_PROXY`, ...).
///
/// Instance-segmentation models have their decoder under a second name, `<name>_decoder`
/// (see [`model_info`]); download both.
pub fn download_model(name: &str, options: DownloadOptions<'_>) -> Result<PathBuf, CacheError> {
    let DownloadOptions {
        cache_dir,
        url,
        hash,
        mut progress,
        force,
    } = options;
    let info = model_info(name);
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        return Err(unknown_model(name, &cache_dir.clone().unwrap_or_default()));
    }
    let cache_dir = match cache_dir {
        Some(d) => d,
        None => model_cache_dir()?,
    };
    let not_in_registry = |missing: &'static str| {
        let (did_you_mean, known) = closest_known(name);
        CacheError::NotInRegistry {
            name: name.to_string(),
            missing,
            did_you_mean,
            known,
        }
    };
    let (url, hash) = match (url, hash, info) {
        (url, Some(hash), _) => match url.or_else(|| info.map(|i| i.url.to_string())) {
            Some(url) => (url, hash),
            None => return Err(not_in_registry("its URL")),
        },
        (url, None, Some(info)) => (
            url.unwrap_or_else(|| info.url.to_string()),
            info.hash.to_string(),
        ),
        (Some(_), None, None) => return Err(not_in_registry("its expected hash")),
        (None, None, None) => return Err(not_in_registry("its URL and its expected hash")),
    };
    let expected = parse_hash(&hash)?;
    let target = cache_dir.join(name);
    if !force && target.is_file() && hash_file(&target, expected.algorithm)? == expected.hex {
        return Ok(target);
    }
    std::fs::create_dir_all(&cache_dir).map_err(io_err(&cache_dir))?;
    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".download")
        .tempfile_in(&cache_dir)
        .map_err(io_err(&cache_dir))?;
    let download_err = |message: String| CacheError::Download {
        url: url.clone(),
        message,
    };
    let response = agent_for(&url).get(&url).call().map_err(|e| match e {
        ureq::Error::Status(code, r) => download_err(format!("HTTP {code} {}", r.status_text())),
        ureq::Error::Transport(t) => download_err(t.to_string()),
    })?;
    let total = response
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok());
    let mut reader = response.into_reader();
    let mut hasher = Hasher::new(expected.algorithm);
    let mut buf = vec![0u8; 1 << 20];
    let mut downloaded = 0u64;
    if let Some(p) = progress.as_mut() {
        p(DownloadProgress { downloaded, total });
    }
    {
        let mut out = std::io::BufWriter::new(temp.as_file_mut());
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(download_err(format!("after {downloaded} bytes: {e}"))),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err(&cache_dir))?;
            downloaded += n as u64;
            if let Some(p) = progress.as_mut() {
                p(DownloadProgress { downloaded, total });
            }
        }
        out.flush().map_err(io_err(&cache_dir))?;
    }
    if let Some(total) = total {
        if downloaded != total {
            return Err(download_err(format!(
                "received {downloaded} of {total} bytes"
            )));
        }
    }
    let found = hasher.hex();
    if found != expected.hex {
        // `temp` is deleted on drop.
        return Err(CacheError::HashMismatch {
            what: url.clone(),
            expected: expected.to_string(),
            found: format!("{}:{found}", expected.algorithm),
        });
    }
    temp.as_file().sync_all().map_err(io_err(&cache_dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // tempfile creates 0600; a shared cache should be readable like micro_sam's.
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o644))
            .map_err(io_err(&target))?;
    }
    temp.persist(&target).map_err(|e| CacheError::Io {
        path: target.clone(),
        source: e.error,
    })?;
    Ok(target)
}

/// An HTTP agent with generous timeouts; proxies from the environment except for loopback.
fn agent_for(url: &str) -> ureq::Agent {
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or("")
        .split(['/', ':'])
        .next()
        .unwrap_or("");
    let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]");
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(120))
        .try_proxy_from_env(!loopback)
        .build()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hashes_parse_and_match_known_vectors() {
        assert_eq!(
            parse_hash("xxh128:ABCDEF0123456789abcdef0123456789")
                .unwrap()
                .hex,
            "abcdef0123456789abcdef0123456789"
        );
        assert!(matches!(parse_hash("md5:00"), Err(CacheError::BadHash(_))));
        assert!(matches!(
            parse_hash("xxh128:xyz"),
            Err(CacheError::BadHash(_))
        ));
        assert_eq!(parse_hash(&"a".repeat(64)).unwrap().algorithm, "sha256");
        // Reference values from Python: xxhash.xxh128(b"").hexdigest(), hashlib.sha256(b"abc").
        let mut h = Hasher::new("xxh128");
        h.update(b"");
        assert_eq!(h.hex(), "99aa06d3014798d86001c324468d497f");
        let mut h = Hasher::new("sha256");
        h.update(b"abc");
        assert_eq!(
            h.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn registry_names_are_unique_and_hashes_valid() {
        let mut names: Vec<_> = REGISTRY.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), REGISTRY.len());
        for m in REGISTRY {
            assert!(parse_hash(m.hash).is_ok(), "{}", m.name);
            assert!(m.url.starts_with("https://"), "{}", m.name);
        }
        assert_eq!(model_info("vit_b_lm").map(|m| m.url), Some("https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/diplomatic-bug/1.2/files/vit_b.pt"));
    }
}
