//! Checkpoint import/export against the Python reference: files made by segment_anything and
//! torch.save (tests/python/checkpoint_fixtures.py) are read and compared tensor by tensor;
//! our exports are loaded by torch.load(weights_only=True) + Sam.load_state_dict(strict=True).
#![allow(clippy::unwrap_used)]

use sam_model::{
    apply_state_dict, infer_architecture, named_tensors, read_checkpoint,
    write_micro_sam_checkpoint, write_safetensors_checkpoint, write_sam_state_dict,
    write_torch_checkpoint, Backbone, CheckpointError, CheckpointKind, ImageEncoderArchitecture,
    LoadMode,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/checkpoint_fixtures.py")
}

/// Marker file that running any fixture's pickle would create.
fn evil_marker(dir: &Path) -> PathBuf {
    dir.join("pickle-code-was-executed")
}

/// The fixture folder, generated once per test run (and again when the script changes).
fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        sam_testkit::script_fixtures("checkpoint", &script(), |dir| vec![evil_marker(dir).into()])
    })
}

fn assert_same(context: &str, a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    let keys = |v: &[(String, Tensor)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(a), keys(b), "{context}: keys differ");
    for ((k, x), (_, y)) in a.iter().zip(b) {
        assert_eq!(x.kind(), y.kind(), "{context}: {k} dtype");
        assert_eq!(x.size(), y.size(), "{context}: {k} shape");
        assert!(
            x.equal(y),
            "{context}: {k} values differ\nexpected:\n{y}\ngot:\n{x}"
        );
    }
}

fn get<'a>(tensors: &'a [(String, Tensor)], key: &str) -> &'a Tensor {
    &tensors
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key}"))
        .1
}

fn floats(t: &Tensor) -> Vec<f64> {
    let t = t.to_kind(Kind::Double).flatten(0, -1);
    Vec::<f64>::try_from(&t).unwrap()
}

#[test]
fn plain_state_dict_is_read_exactly() {
    let ckpt = read_checkpoint(fixtures().join("plain.pth")).unwrap();
    assert_eq!(ckpt.kind, CheckpointKind::SamStateDict);
    assert!(ckpt.decoder_state.is_none());
    assert!(ckpt.warnings.is_empty(), "{:?}", ckpt.warnings);
    // The tiny SAM has 60-odd tensors; `_metadata` is not one of them.
    assert!(ckpt.model_state.len() > 50);
    assert!(ckpt.model_state.iter().all(|(k, _)| !k.starts_with('_')));
    // Values checked against Python in round_trip_through_python; here spot-check the shapes.
    assert_eq!(
        get(&ckpt.model_state, "image_encoder.pos_embed").size(),
        [1, 4, 4, 48]
    );
    assert_eq!(
        get(&ckpt.model_state, "image_encoder.blocks.1.attn.rel_pos_h").size(),
        [7, 12]
    );
    assert_eq!(
        get(&ckpt.model_state, "image_encoder.blocks.0.attn.rel_pos_h").size(),
        [3, 12]
    );
}

#[test]
fn micro_sam_checkpoints_strip_prefixes_and_skip_training_state() {
    let plain = read_checkpoint(fixtures().join("plain.pth")).unwrap();
    for (file, prefix) in [
        ("micro_sam.pt", "sam."),
        ("micro_sam_ddp.pt", "module.sam."),
    ] {
        let ckpt = read_checkpoint(fixtures().join(file)).unwrap();
        assert_eq!(
            ckpt.kind,
            CheckpointKind::MicroSam {
                prefix: prefix.into()
            },
            "{file}"
        );
        assert_same(file, &ckpt.model_state, &plain.model_state);
        let decoder = ckpt.decoder_state.as_ref().expect("decoder_state");
        let decoder_keys: Vec<_> = decoder.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            decoder_keys,
            [
                "decoder.blocks.0.block.0.weight",
                "decoder.blocks.0.block.0.bias",
                "decoder.samplers.0.conv.weight",
                "base.block.1.num_batches_tracked",
                "out_conv.weight",
                "out_conv.bias"
            ]
        );
        assert_eq!(
            get(decoder, "base.block.1.num_batches_tracked").kind(),
            Kind::Int64
        );
        assert_eq!(
            get(decoder, "base.block.1.num_batches_tracked").int64_value(&[]),
            7
        );
        for skipped in [
            "optimizer_state",
            "scheduler_state",
            "epoch",
            "best_metric",
            "init",
            "timestamp",
        ] {
            assert!(
                ckpt.warnings
                    .iter()
                    .any(|w| w.contains(&format!("`{skipped}`"))),
                "{file}: no warning about {skipped}: {:?}",
                ckpt.warnings
            );
        }
        assert!(
            ckpt.warnings
                .iter()
                .any(|w| w.contains("unknown entry `notes`")),
            "{:?}",
            ckpt.warnings
        );
    }
    let decoder_only = read_checkpoint(fixtures().join("decoder_only.pt")).unwrap();
    assert_eq!(decoder_only.kind, CheckpointKind::DecoderOnly);
    assert!(decoder_only.model_state.is_empty());
    assert_eq!(decoder_only.decoder_state.map(|d| d.len()), Some(6));
}

#[test]
fn dtypes_strides_offsets_and_byte_order() {
    let ckpt = read_checkpoint(fixtures().join("dtypes.pth")).unwrap();
    let t = &ckpt.model_state;
    assert_eq!(ckpt.kind, CheckpointKind::DecoderOnly); // no SAM keys: a generic state_dict
    let t = if t.is_empty() {
        ckpt.decoder_state.as_ref().unwrap()
    } else {
        t
    };
    assert_eq!(get(t, "f32").kind(), Kind::Float);
    assert_eq!(get(t, "f16").kind(), Kind::Half);
    assert_eq!(get(t, "bf16").kind(), Kind::BFloat16);
    assert_eq!(get(t, "i64").kind(), Kind::Int64);
    assert_eq!(
        floats(get(t, "i64")),
        [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0]
    );
    // base = arange(24).reshape(4, 6)
    let base = |r: usize, c: usize| (r * 6 + c) as f64;
    let transposed: Vec<f64> = (0..6)
        .flat_map(|c| (0..4).map(move |r| base(r, c)))
        .collect();
    assert_eq!(get(t, "transposed").size(), [6, 4]);
    assert_eq!(floats(get(t, "transposed")), transposed);
    let offset: Vec<f64> = (1..3)
        .flat_map(|r| (2..6).map(move |c| base(r, c)))
        .collect();
    assert_eq!(floats(get(t, "offset_view")), offset);
    let every_other: Vec<f64> = (0..4)
        .flat_map(|r| (0..6).step_by(2).map(move |c| base(r, c)))
        .collect();
    assert_eq!(floats(get(t, "every_other")), every_other);
    assert_eq!(
        floats(get(t, "shares_storage")),
        (0..24).map(f64::from).collect::<Vec<_>>()
    );
    assert_eq!(get(t, "scalar").size(), Vec::<i64>::new());
    assert_eq!(get(t, "scalar").double_value(&[]), 3.5);
    assert_eq!(get(t, "empty").size(), [0, 3]);
    assert_eq!(get(t, "param").size(), [2, 2]);
    assert!(t.iter().all(|(_, x)| x.is_contiguous()));

    let little = read_checkpoint(fixtures().join("little.pth")).unwrap();
    let big = read_checkpoint(fixtures().join("big.pth")).unwrap();
    assert_same(
        "big-endian archive",
        big.decoder_state.as_ref().unwrap(),
        little.decoder_state.as_ref().unwrap(),
    );
}

#[test]
fn pickled_code_is_refused_without_running_it() {
    let dir = fixtures();
    for (file, location) in [
        ("evil_entry.pth", "image_encoder.pos_embed"),
        ("evil_root.pth", "<file>"),
        ("evil_micro_sam.pt", "model_state/image_encoder.pos_embed"),
        ("evil_extra_entry.pt", "payload"),
    ] {
        let path = dir.join(file);
        let err = read_checkpoint(&path).unwrap_err();
        match &err {
            CheckpointError::ForbiddenGlobal {
                path: p,
                global,
                location: l,
            } => {
                assert_eq!(p, &path);
                assert_eq!(global, "posix.system", "{file}");
                assert_eq!(l, location, "{file}");
            }
            other => panic!("{file}: expected ForbiddenGlobal, got {other}"),
        }
        let message = err.to_string();
        assert!(
            message.contains(file) && message.contains("posix.system"),
            "{message}"
        );
    }
    assert!(!evil_marker(dir).exists(), "a pickle ran code");
}

#[test]
fn truncated_and_corrupt_files_are_errors_naming_the_file() {
    let original = std::fs::read(fixtures().join("plain.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let n = original.len();
    for cut in [
        0,
        1,
        4,
        30,
        100,
        1000,
        n / 4,
        n / 2,
        n - 1000,
        n - 100,
        n - 22,
        n - 1,
    ] {
        let path = dir.path().join(format!("cut_{cut}.pth"));
        std::fs::write(&path, &original[..cut]).unwrap();
        let Err(err) = read_checkpoint(&path) else {
            panic!("truncated at {cut} of {n}: read")
        };
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
    // Flipped bytes inside a storage: the zip CRC catches them.
    let mut corrupt = original.clone();
    for b in &mut corrupt[n / 2..n / 2 + 16] {
        *b ^= 0x5a;
    }
    let path = dir.path().join("corrupt.pth");
    std::fs::write(&path, &corrupt).unwrap();
    assert!(read_checkpoint(&path).is_err());

    // A valid zip around a truncated pickle: every cut is a pickle error, never a panic.
    let pickle = {
        let mut zip =
            zip::ZipArchive::new(std::fs::File::open(fixtures().join("plain.pth")).unwrap())
                .unwrap();
        let name = zip
            .file_names()
            .find(|n| n.ends_with("/data.pkl"))
            .unwrap()
            .to_string();
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut zip.by_name(&name).unwrap(), &mut buf).unwrap();
        buf
    };
    for cut in [
        0,
        2,
        3,
        17,
        pickle.len() / 3,
        pickle.len() / 2,
        pickle.len() - 2,
        pickle.len() - 1,
    ] {
        let path = dir.path().join(format!("pickle_cut_{cut}.pth"));
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", opts).unwrap();
        std::io::Write::write_all(&mut zip, &pickle[..cut]).unwrap();
        zip.finish().unwrap();
        match read_checkpoint(&path) {
            Err(CheckpointError::Pickle {
                path: p, offset, ..
            }) => {
                assert_eq!(p, path);
                assert!(offset <= cut as u64);
            }
            other => panic!("cut {cut}: expected a pickle error, got {other:?}"),
        }
    }
    let not_a_checkpoint = dir.path().join("text.pth");
    std::fs::write(&not_a_checkpoint, "hello").unwrap();
    assert!(matches!(
        read_checkpoint(&not_a_checkpoint),
        Err(CheckpointError::Format { .. })
    ));
    let missing = dir.path().join("missing.pth");
    assert!(matches!(
        read_checkpoint(&missing),
        Err(CheckpointError::Io { .. })
    ));
}

#[test]
fn architecture_of_the_tiny_reference_model() {
    let ckpt = read_checkpoint(fixtures().join("plain.pth")).unwrap();
    let arch = infer_architecture(&ckpt.model_state).unwrap();
    assert_eq!(arch.backbone, Backbone::CustomVit);
    let ImageEncoderArchitecture::Vit(vit) = &arch.image_encoder else {
        panic!("{arch:?}")
    };
    // Values from tiny_sam() in checkpoint_fixtures.py.
    assert_eq!(
        (
            vit.embed_dim,
            vit.depth,
            vit.num_heads,
            vit.patch_size,
            vit.img_size,
            vit.window_size
        ),
        (48, 2, 4, 16, 64, 2)
    );
    assert_eq!(vit.global_attn_indexes, [1]);
    assert_eq!((vit.mlp_dim, vit.out_chans, vit.in_chans), (192, 32, 3));
    assert_eq!(
        (
            arch.prompt_embed_dim,
            arch.num_multimask_outputs,
            arch.decoder_depth
        ),
        (32, 3, 2)
    );
    let err = arch.ensure_backbone("vit_b_lm").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("vit_b_lm") && text.contains("custom_vit (embed_dim 48"),
        "{text}"
    );
}

/// Zero tensors with the shapes of a key subset of a SAM checkpoint.
fn fake(shapes: &[(&str, &[i64])]) -> Vec<(String, Tensor)> {
    shapes
        .iter()
        .map(|(k, s)| (k.to_string(), Tensor::zeros(*s, (Kind::Float, Device::Cpu))))
        .collect()
}

fn mask_decoder_keys() -> Vec<(&'static str, &'static [i64])> {
    vec![
        ("mask_decoder.iou_token.weight", &[1, 256]),
        ("mask_decoder.mask_tokens.weight", &[4, 256]),
        ("mask_decoder.transformer.layers.0.norm1.weight", &[256]),
        ("mask_decoder.transformer.layers.1.norm1.weight", &[256]),
    ]
}

#[test]
fn architecture_of_sam_sizes_and_mobile_sam() {
    // vit_b / vit_l shapes from segment_anything's build_sam.py (window 14, 64×64 tokens).
    for (dim, depth, heads, global, name, backbone) in [
        (768, 12, 12, vec![2, 5, 8, 11], "vit_b", Backbone::VitB),
        (1024, 24, 16, vec![5, 11, 17, 23], "vit_l", Backbone::VitL),
    ] {
        let head_dim = dim / heads;
        let mut keys: Vec<(String, Vec<i64>)> = vec![
            (
                "image_encoder.patch_embed.proj.weight".into(),
                vec![dim, 3, 16, 16],
            ),
            ("image_encoder.pos_embed".into(), vec![1, 64, 64, dim]),
            (
                "image_encoder.blocks.0.mlp.lin1.weight".into(),
                vec![4 * dim, dim],
            ),
            ("image_encoder.neck.0.weight".into(), vec![256, dim, 1, 1]),
        ];
        for i in 0..depth {
            let size = if global.contains(&i) { 127 } else { 27 };
            keys.push((
                format!("image_encoder.blocks.{i}.attn.rel_pos_h"),
                vec![size, head_dim],
            ));
        }
        let mut shapes: Vec<(&str, &[i64])> = keys
            .iter()
            .map(|(k, s)| (k.as_str(), s.as_slice()))
            .collect();
        shapes.extend(mask_decoder_keys());
        let arch = infer_architecture(&fake(&shapes)).unwrap();
        assert_eq!(arch.backbone, backbone);
        let ImageEncoderArchitecture::Vit(vit) = &arch.image_encoder else {
            panic!()
        };
        assert_eq!(
            (vit.depth, vit.num_heads, vit.window_size, vit.img_size),
            (depth, heads, 14, 1024)
        );
        assert_eq!(vit.global_attn_indexes, global);
        arch.ensure_backbone(name).unwrap();
        let other = if name == "vit_b" { "vit_l" } else { "vit_b" };
        match arch.ensure_backbone(other) {
            Err(CheckpointError::BackboneMismatch {
                configured,
                found_name,
                ..
            }) => {
                assert_eq!(configured, other);
                assert_eq!(found_name, name);
            }
            r => panic!("{r:?}"),
        }
    }

    // MobileSAM vit_t (mobile_sam/build_sam.py): embed_dims [64,128,160,320], depths [2,2,6,2],
    // heads [2,4,5,10], windows [7,7,14,7].
    let mut keys: Vec<(String, Vec<i64>)> = vec![
        (
            "image_encoder.patch_embed.seq.0.c.weight".into(),
            vec![32, 3, 3, 3],
        ),
        ("image_encoder.neck.0.weight".into(), vec![256, 320, 1, 1]),
    ];
    for b in 0..2 {
        keys.push((
            format!("image_encoder.layers.0.blocks.{b}.conv1.c.weight"),
            vec![256, 64, 1, 1],
        ));
    }
    for (s, dim, depth, heads, window) in
        [(1, 128, 2, 4, 7), (2, 160, 6, 5, 14), (3, 320, 2, 10, 7)]
    {
        for b in 0..depth {
            let p = format!("image_encoder.layers.{s}.blocks.{b}.");
            keys.push((format!("{p}attn.norm.weight"), vec![dim]));
            keys.push((
                format!("{p}attn.attention_biases"),
                vec![heads, window * window],
            ));
            keys.push((format!("{p}mlp.fc1.weight"), vec![4 * dim, dim]));
        }
    }
    let mut shapes: Vec<(&str, &[i64])> = keys
        .iter()
        .map(|(k, s)| (k.as_str(), s.as_slice()))
        .collect();
    shapes.extend(mask_decoder_keys());
    let arch = infer_architecture(&fake(&shapes)).unwrap();
    assert_eq!(arch.backbone, Backbone::VitT);
    let ImageEncoderArchitecture::TinyVit(t) = &arch.image_encoder else {
        panic!()
    };
    assert_eq!(t.embed_dims, [64, 128, 160, 320]);
    assert_eq!(t.depths, [2, 2, 6, 2]);
    assert_eq!(t.num_heads, [0, 4, 5, 10]);
    assert_eq!(t.window_sizes, [0, 7, 14, 7]);
    assert_eq!((t.mlp_ratio, t.out_chans), (4, 256));
    arch.ensure_backbone("vit_t_lm").unwrap();
    assert!(arch.ensure_backbone("vit_b").is_err());
}

#[test]
fn round_trip_through_python() {
    let dir = fixtures();
    let out = tempfile::tempdir().unwrap();
    let plain = read_checkpoint(dir.join("plain.pth")).unwrap();
    let micro = read_checkpoint(dir.join("micro_sam.pt")).unwrap();
    let dtypes = read_checkpoint(dir.join("dtypes.pth")).unwrap();

    // Through a VarStore, as training does: apply strictly, then export what the store holds.
    let vs = tch::nn::VarStore::new(Device::Cpu);
    for (k, t) in &plain.model_state {
        // tch paths take one segment at a time: `image_encoder / blocks / 0 / ...`.
        let (parent, name) = k.rsplit_once('.').unwrap_or(("", k));
        let path = parent
            .split('.')
            .filter(|s| !s.is_empty())
            .fold(vs.root(), |p, s| p / s);
        let _ = path.zeros_no_train(name, &t.size());
    }
    // The variable names are the keys with '.' path separators, exactly the SAM keys.
    let report = apply_state_dict(&vs, &plain.model_state, LoadMode::Strict).unwrap();
    assert_eq!(report.applied.len(), plain.model_state.len());
    let exported = named_tensors(&vs);

    std::fs::copy(dir.join("plain.pth"), out.path().join("plain.pth")).unwrap();
    std::fs::copy(dir.join("dtypes.pth"), out.path().join("dtypes.pth")).unwrap();
    // Both layouts carry the record of a model run at its native patch side (issue 19):
    // Python's strict loads below must not mind it.
    write_torch_checkpoint(out.path().join("exported.pth"), &exported, None, Some(512)).unwrap();
    write_torch_checkpoint(
        out.path().join("exported_micro_sam.pt"),
        &plain.model_state,
        micro.decoder_state.as_deref(),
        Some(512),
    )
    .unwrap();
    write_sam_state_dict(
        out.path().join("exported_dtypes.pth"),
        dtypes.decoder_state.as_ref().unwrap(),
    )
    .unwrap();
    let output = Command::new(sam_testkit::venv_python())
        .arg(script())
        .arg("verify")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "Python rejected our export:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // Ours → Python → ours: what Python re-saved is what we started with.
    let mut original = plain.model_state;
    sam_model_sort(&mut original);
    let mut resaved = read_checkpoint(out.path().join("resaved.pth"))
        .unwrap()
        .model_state;
    sam_model_sort(&mut resaved);
    assert_same("resaved.pth", &resaved, &original);
    // And our own files read back identically.
    let back = read_checkpoint(out.path().join("exported.pth")).unwrap();
    assert_eq!(back.input_size, Some(512));
    assert_eq!(back.kind, CheckpointKind::SamStateDict);
    let mut back = back.model_state;
    sam_model_sort(&mut back);
    assert_same("exported.pth", &back, &original);
    // A file without the record (Python's own) runs at the built side.
    let resaved = read_checkpoint(out.path().join("resaved.pth")).unwrap();
    assert_eq!(resaved.input_size, None);
    let back = read_checkpoint(out.path().join("exported_micro_sam.pt")).unwrap();
    assert_eq!(back.input_size, Some(512));
    assert_eq!(
        back.kind,
        CheckpointKind::MicroSam {
            prefix: String::new()
        }
    );
    assert_same(
        "decoder_state",
        back.decoder_state.as_ref().unwrap(),
        micro.decoder_state.as_ref().unwrap(),
    );
}

fn sam_model_sort(v: &mut [(String, Tensor)]) {
    v.sort_by(|a, b| a.0.cmp(&b.0));
}

#[test]
fn safetensors_round_trip() {
    let micro = read_checkpoint(fixtures().join("micro_sam.pt")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("ours.safetensors");
    write_safetensors_checkpoint(&path, &micro.model_state, micro.decoder_state.as_deref())
        .unwrap();
    let back = read_checkpoint(&path).unwrap();
    assert_eq!(back.kind, CheckpointKind::Safetensors);
    let (mut a, mut b) = (back.model_state, micro.model_state);
    sam_model_sort(&mut a);
    sam_model_sort(&mut b);
    assert_same("safetensors model_state", &a, &b);
    let (mut a, mut b) = (back.decoder_state.unwrap(), micro.decoder_state.unwrap());
    sam_model_sort(&mut a);
    sam_model_sort(&mut b);
    assert_same("safetensors decoder_state", &a, &b);
    // Only the final file is left: the temporary file was renamed onto it.
    let names: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["ours.safetensors"]);
}

#[test]
fn key_order_survives_more_than_one_pickle_batch() {
    // Python's pickler writes dicts in batches of 1000 items; order must survive 2500 keys.
    let tensors: Vec<(String, Tensor)> = (0..2500)
        .map(|i| (format!("t{}", 2500 - i), Tensor::from_slice(&[i as f32])))
        .collect();
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("many.pth");
    write_sam_state_dict(&path, &tensors).unwrap();
    let back = read_checkpoint(&path).unwrap().decoder_state.unwrap();
    assert_same("2500 keys", &back, &tensors);
}

#[test]
fn issue_16_non_finite_weights_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let good = Tensor::from_slice(&[0.5f32, -1.0, 2.0]);
    let nan = Tensor::from_slice(&[0.5f32, f32::NAN, f32::NAN, 1.0]);
    let inf = Tensor::from_slice(&[f32::INFINITY, 0.0]).to_kind(Kind::Half);
    let state = vec![
        ("mask_decoder.iou_token.weight".to_string(), good.copy()),
        ("mask_decoder.mask_tokens.weight".to_string(), nan),
        (
            "prompt_encoder.index".to_string(),
            Tensor::from_slice(&[3i64]),
        ),
    ];
    let plain = dir.path().join("diverged.pth");
    write_sam_state_dict(&plain, &state).unwrap();
    let err = read_checkpoint(&plain).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, CheckpointError::NonFinite { count: 2, total: 4, .. })
            && msg.contains("diverged.pth: entry `mask_decoder.mask_tokens.weight` holds 2 non-finite value(s) (NaN or infinity) among its 4")
            && msg.contains("use an earlier checkpoint"),
        "{msg}"
    );
    // In the decoder of a micro_sam checkpoint, in fp16, and in our safetensors files.
    let micro = dir.path().join("micro.pt");
    let model = vec![("mask_decoder.iou_token.weight".to_string(), good.copy())];
    let decoder = vec![("out_conv.bias".to_string(), inf)];
    write_micro_sam_checkpoint(&micro, &model, &decoder).unwrap();
    let msg = read_checkpoint(&micro).unwrap_err().to_string();
    assert!(
        msg.contains("entry `decoder_state/out_conv.bias` holds 1 non-finite"),
        "{msg}"
    );
    let st = dir.path().join("latest.safetensors");
    write_safetensors_checkpoint(&st, &state, None).unwrap();
    let msg = read_checkpoint(&st).unwrap_err().to_string();
    assert!(msg.contains("`mask_decoder.mask_tokens.weight`"), "{msg}");
    // Finite weights load.
    write_sam_state_dict(&plain, &state[..1]).unwrap();
    assert_eq!(read_checkpoint(&plain).unwrap().model_state.len(), 1);
}
