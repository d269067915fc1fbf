//! The model cache shared with micro_sam: named models (`vit_b`, `vit_b_lm`, ...) live in
//! `$MICROSAM_CACHEDIR/models/<name>` or, by default, `~/.cache/micro_sam/models/<name>`,
//! exactly where micro_sam puts them, so both tools share one download.
//!
//! [`resolve_checkpoint`] turns a file path or a model name into a file of the cache without
//! any network access; fetching a model into the cache is `download_model`, in
//! `crate::download` behind the `download` feature.

use sha2::Digest;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

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

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
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
pub(crate) fn closest_known(name: &str) -> (Option<String>, String) {
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

pub(crate) fn unknown_model(name: &str, cache_dir: &Path) -> CacheError {
    let (did_you_mean, known) = closest_known(name);
    CacheError::UnknownModel {
        name: name.to_string(),
        cache_dir: cache_dir.to_path_buf(),
        did_you_mean,
        known,
    }
}

/// A streaming hash of one of the kinds the registry uses.
pub(crate) enum Hasher {
    Xxh128(Box<xxhash_rust::xxh3::Xxh3>),
    Sha256(sha2::Sha256),
}

/// A parsed `algorithm:hex` hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExpectedHash {
    pub(crate) algorithm: &'static str,
    pub(crate) hex: String,
}

impl fmt::Display for ExpectedHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

pub(crate) fn parse_hash(s: &str) -> Result<ExpectedHash, CacheError> {
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
    pub(crate) fn new(algorithm: &str) -> Self {
        if algorithm == "xxh128" {
            Hasher::Xxh128(Box::default())
        } else {
            Hasher::Sha256(sha2::Sha256::new())
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Xxh128(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    /// Lower-case hex, as `xxh128sum` / `sha256sum` print it.
    pub(crate) fn hex(self) -> String {
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

pub(crate) fn hash_file(path: &Path, algorithm: &str) -> Result<String, CacheError> {
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
