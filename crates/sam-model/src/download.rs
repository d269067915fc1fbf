//! Downloading named models into the cache (feature `download`): micro_sam's official URL,
//! hash verification while the bytes arrive, and an atomic rename into place.
//!
//! This is the only network code of the crate; without the feature it is not compiled, and
//! [`resolve_checkpoint`](crate::resolve_checkpoint) still finds models already in the cache.

use std::fmt;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use crate::cache::{
    closest_known, hash_file, io_err, model_cache_dir, model_info, parse_hash, unknown_model,
    CacheError, Hasher,
};

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
