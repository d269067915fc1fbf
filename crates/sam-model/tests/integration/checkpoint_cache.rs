//! The model cache: resolving names and paths, and downloading with hash verification from a
//! local HTTP server started in the test.
#![allow(clippy::unwrap_used)]

use sam_model::{
    download_model, model_info, resolve_checkpoint_in, resolve_decoder_checkpoint_in, CacheError,
    DownloadOptions, DownloadProgress,
};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The served model: 9000 bytes. Hashes computed in Python:
/// `xxhash.xxh128(b"hello sam" * 1000)`, `hashlib.sha256(b"hello sam" * 1000)`.
fn body() -> Vec<u8> {
    b"hello sam".repeat(1000)
}
const BODY_XXH128: &str = "xxh128:1005e84a82ae388a897a526882620aba";
const BODY_SHA256: &str = "sha256:4240f78303d0872ef74f3bf9e23e116628d9f6a90b1da77d46869dafd9dc3e45";

/// A one-thread HTTP/1.1 server on 127.0.0.1: `/model` serves the body, `/short` announces the
/// full length but sends half and closes, anything else is 404. Counts requests.
struct Server {
    base: String,
    requests: Arc<AtomicUsize>,
}

fn serve() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let counter = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            counter.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                    break;
                }
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("")
                .to_string();
            let body = body();
            let response = match path.as_str() {
                "/model" => [
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes(),
                    body,
                ]
                .concat(),
                "/short" => [
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes(),
                    body[..body.len() / 2].to_vec(),
                ]
                .concat(),
                _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    Server { base, requests }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn download_verifies_hash_reports_progress_and_reuses_the_cache() {
    let server = serve();
    let cache = tempfile::tempdir().unwrap();
    let models = cache.path().join("models");
    let mut seen: Vec<DownloadProgress> = Vec::new();
    let mut record = |p: DownloadProgress| seen.push(p);
    let path = download_model(
        "vit_b",
        DownloadOptions {
            cache_dir: Some(models.clone()),
            url: Some(format!("{}/model", server.base)),
            hash: Some(BODY_XXH128.into()),
            progress: Some(&mut record),
            force: false,
        },
    )
    .unwrap();
    assert_eq!(path, models.join("vit_b"));
    assert_eq!(std::fs::read(&path).unwrap(), body());
    assert_eq!(files_in(&models), ["vit_b"]);
    let last = seen.last().copied().unwrap();
    assert_eq!(
        last,
        DownloadProgress {
            downloaded: 9000,
            total: Some(9000)
        }
    );
    assert!(seen.windows(2).all(|w| w[0].downloaded <= w[1].downloaded));
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);

    // Cached with the right hash: no second request.
    let again = download_model(
        "vit_b",
        DownloadOptions {
            cache_dir: Some(models.clone()),
            url: Some(format!("{}/model", server.base)),
            hash: Some(BODY_XXH128.into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(again, path);
    assert_eq!(server.requests.load(Ordering::SeqCst), 1);

    // sha256 hashes work too, and the resolved name now finds the file.
    let sha = download_model(
        "my_model",
        DownloadOptions {
            cache_dir: Some(models.clone()),
            url: Some(format!("{}/model", server.base)),
            hash: Some(BODY_SHA256.into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(std::fs::read(sha).unwrap(), body());
    assert_eq!(resolve_checkpoint_in("vit_b", &models).unwrap(), path);
}

#[test]
fn a_wrong_hash_or_a_failed_transfer_leaves_nothing_behind() {
    let server = serve();
    let cache = tempfile::tempdir().unwrap();
    let models = cache.path().join("models");
    let wrong = download_model(
        "vit_b",
        DownloadOptions {
            cache_dir: Some(models.clone()),
            url: Some(format!("{}/model", server.base)),
            hash: Some(format!("xxh128:{}", "0".repeat(32))),
            ..Default::default()
        },
    )
    .unwrap_err();
    match &wrong {
        CacheError::HashMismatch {
            expected, found, ..
        } => {
            assert_eq!(expected, &format!("xxh128:{}", "0".repeat(32)));
            assert_eq!(found, BODY_XXH128);
        }
        other => panic!("expected a hash mismatch, got {other}"),
    }
    assert!(
        files_in(&models).is_empty(),
        "left behind: {:?}",
        files_in(&models)
    );

    for (path, expect) in [("/missing", "HTTP 404"), ("/short", "")] {
        let err = download_model(
            "vit_b",
            DownloadOptions {
                cache_dir: Some(models.clone()),
                url: Some(format!("{}{path}", server.base)),
                hash: Some(BODY_XXH128.into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, CacheError::Download { .. }), "{path}: {err}");
        assert!(err.to_string().contains(expect), "{err}");
        assert!(
            files_in(&models).is_empty(),
            "{path} left behind: {:?}",
            files_in(&models)
        );
    }

    // A model the registry does not know needs an explicit hash.
    let err = download_model(
        "not_a_model",
        DownloadOptions {
            cache_dir: Some(models.clone()),
            url: Some(format!("{}/model", server.base)),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, CacheError::NotInRegistry { .. }), "{err}");
}

#[test]
fn issue_16_a_name_outside_the_registry_says_a_hash_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let opts = |url: Option<&str>, hash: Option<&str>| DownloadOptions {
        cache_dir: Some(dir.path().to_path_buf()),
        url: url.map(str::to_string),
        hash: hash.map(str::to_string),
        ..Default::default()
    };
    let msg = download_model("my_lab_model", opts(None, None))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("`my_lab_model` is not a model micro_sam knows")
            && msg.contains(
                "give its URL and its expected hash (`--url URL --hash sha256:<64 hex digits>`"
            )
            && msg.contains("known models: vit_l, vit_h, vit_b"),
        "{msg}"
    );
    let msg = download_model("vit_b_lmm", opts(Some("http://127.0.0.1:9/m"), None))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("(did you mean `vit_b_lm`?)") && msg.contains("give its expected hash"),
        "{msg}"
    );
    let hash = format!("sha256:{}", "0".repeat(64));
    let msg = download_model("my_lab_model", opts(None, Some(&hash)))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("give its URL (`--url URL"), "{msg}");
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn resolving_paths_and_names() {
    let cache = tempfile::tempdir().unwrap();
    let models = cache.path().join("models");
    std::fs::create_dir_all(&models).unwrap();

    let file = cache.path().join("weights.pth");
    std::fs::write(&file, b"x").unwrap();
    assert_eq!(
        resolve_checkpoint_in(file.to_str().unwrap(), &models).unwrap(),
        file
    );

    let missing = cache.path().join("nope.pth");
    assert!(matches!(
        resolve_checkpoint_in(missing.to_str().unwrap(), &models),
        Err(CacheError::FileNotFound(p)) if p == missing
    ));

    // Known but not downloaded: the error says where it belongs and where it comes from.
    let err = resolve_checkpoint_in("vit_b_lm", &models).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&models.join("vit_b_lm").display().to_string()),
        "{text}"
    );
    assert!(text.contains(model_info("vit_b_lm").unwrap().url), "{text}");
    assert!(text.contains("MICROSAM_CACHEDIR"), "{text}");

    let err = resolve_checkpoint_in("vit_bb", &models).unwrap_err();
    match err {
        CacheError::UnknownModel { did_you_mean, .. } => {
            assert_eq!(did_you_mean.as_deref(), Some("vit_b"))
        }
        other => panic!("{other}"),
    }

    std::fs::write(models.join("vit_b_lm"), b"x").unwrap();
    assert_eq!(
        resolve_checkpoint_in("vit_b_lm", &models).unwrap(),
        models.join("vit_b_lm")
    );
    // Its decoder is a second file; vit_b has none.
    assert!(matches!(
        resolve_decoder_checkpoint_in("vit_b_lm", &models),
        Err(CacheError::NotDownloaded { name, .. }) if name == "vit_b_lm_decoder"
    ));
    std::fs::write(models.join("vit_b_lm_decoder"), b"x").unwrap();
    assert_eq!(
        resolve_decoder_checkpoint_in("vit_b_lm", &models).unwrap(),
        Some(models.join("vit_b_lm_decoder"))
    );
    assert_eq!(
        resolve_decoder_checkpoint_in("vit_b", &models).unwrap(),
        None
    );
}

#[test]
fn the_cache_folder_follows_micro_sam() {
    // The only test in this binary that touches the environment.
    std::env::set_var("MICROSAM_CACHEDIR", "/data/shared/micro_sam");
    assert_eq!(
        sam_model::model_cache_dir().unwrap(),
        Path::new("/data/shared/micro_sam/models")
    );
    std::env::remove_var("MICROSAM_CACHEDIR");
    std::env::set_var("XDG_CACHE_HOME", "/scratch/cache");
    assert_eq!(
        sam_model::model_cache_dir().unwrap(),
        Path::new("/scratch/cache/micro_sam/models")
    );
    std::env::remove_var("XDG_CACHE_HOME");
    std::env::set_var("HOME", "/home/lab");
    assert_eq!(
        sam_model::model_cache_dir().unwrap(),
        Path::new("/home/lab/.cache/micro_sam/models")
    );
}
