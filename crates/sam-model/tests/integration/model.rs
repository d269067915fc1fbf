//! `SamModel`: SAM plus the optional UNETR decoder, loaded from files we write, with both
//! architectures inferred from the weights.
#![allow(clippy::unwrap_used)]

use sam_model::{
    named_tensors, write_micro_sam_checkpoint, write_safetensors_checkpoint, write_sam_state_dict,
    LoadError, LoadMode, ModelPart, SamConfig, SamModel, SamModelError, UnetrConfig,
    DECODER_PREFIX,
};
use tch::{Device, Tensor};

/// A tiny decoder with transposed-convolution upsampling and its own widths, so that every
/// inferred field differs from `UnetrConfig::sam()`.
fn tiny_decoder() -> UnetrConfig {
    UnetrConfig {
        initial_features: 4,
        use_conv_transpose: true,
        ..UnetrConfig::tiny()
    }
}

fn tiny_model(with_decoder: bool) -> SamModel {
    tch::manual_seed(17);
    let decoder = tiny_decoder();
    SamModel::new(
        &SamConfig::tiny(),
        with_decoder.then_some(&decoder),
        Device::Cpu,
    )
    .unwrap()
}

fn assert_same_weights(a: &SamModel, b: &SamModel) {
    let (a, b) = (a.named_variables(), b.named_variables());
    let keys = |v: &[(String, Tensor)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
    assert_eq!(keys(&a), keys(&b));
    for ((k, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{k} differs after the round trip");
    }
}

#[test]
fn load_infers_sam_and_decoder_architectures() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(true);
    let file = dir.path().join("micro_sam.pt");
    let decoder_vs = model.decoder_var_store().unwrap();
    write_micro_sam_checkpoint(
        &file,
        &named_tensors(model.sam_var_store()),
        &named_tensors(decoder_vs),
    )
    .unwrap();

    let loaded = SamModel::load(&file, Device::Cpu).unwrap();
    assert_eq!(
        loaded.sam().config().image_encoder,
        SamConfig::tiny().image_encoder
    );
    assert_eq!(loaded.decoder().unwrap().config(), &tiny_decoder());
    assert!(loaded
        .describe()
        .ends_with("with instance-segmentation decoder"));
    assert_same_weights(&model, &loaded);

    // Our safetensors checkpoint holds the same two parts.
    let ours = dir.path().join("model.safetensors");
    write_safetensors_checkpoint(
        &ours,
        &named_tensors(model.sam_var_store()),
        Some(&named_tensors(decoder_vs)),
    )
    .unwrap();
    assert_same_weights(&model, &SamModel::load(&ours, Device::Cpu).unwrap());
}

#[test]
fn load_without_decoder_state_builds_sam_alone() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(false);
    let file = dir.path().join("sam.pth");
    write_sam_state_dict(&file, &named_tensors(model.sam_var_store())).unwrap();

    let loaded = SamModel::load(&file, Device::Cpu).unwrap();
    assert!(!loaded.has_decoder());
    assert!(loaded.decoder_var_store().is_none());
    assert_eq!(
        loaded.sam().config().image_encoder,
        SamConfig::tiny().image_encoder
    );
    assert_same_weights(&model, &loaded);
}

#[test]
fn a_decoder_whose_keys_do_not_fit_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(true);
    let mut decoder_state = named_tensors(model.decoder_var_store().unwrap());
    let renamed = decoder_state
        .iter_mut()
        .find(|(k, _)| k != "out_conv.weight")
        .unwrap();
    let original = renamed.0.clone();
    renamed.0 = format!("{original}_renamed");
    let file = dir.path().join("bad_decoder.pt");
    write_micro_sam_checkpoint(&file, &named_tensors(model.sam_var_store()), &decoder_state)
        .unwrap();

    let err = SamModel::load(&file, Device::Cpu).unwrap_err();
    match &err {
        SamModelError::Weights {
            part: ModelPart::Decoder,
            source: LoadError::Mismatch(report),
            ..
        } => {
            assert_eq!(report.missing.len(), 1, "{report}");
            assert_eq!(report.unexpected.len(), 1, "{report}");
        }
        other => panic!("expected a decoder mismatch, got {other:?}"),
    }
    let msg = err.to_string();
    for part in [
        file.display().to_string(),
        "decoder_state".to_string(),
        original.clone(),
        format!("{original}_renamed"),
    ] {
        assert!(msg.contains(&part), "missing `{part}` in: {msg}");
    }

    // A decoder_state that is no UNETR at all is refused before anything is built.
    let no_unetr = dir.path().join("no_unetr.pt");
    decoder_state.retain(|(k, _)| k != "out_conv.weight");
    write_micro_sam_checkpoint(
        &no_unetr,
        &named_tensors(model.sam_var_store()),
        &decoder_state,
    )
    .unwrap();
    let msg = SamModel::load(&no_unetr, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("out_conv.weight"), "{msg}");
}

#[test]
fn named_variables_round_trip_with_the_decoder_prefix() {
    let model = tiny_model(true);
    let named = model.named_variables();
    assert!(named.iter().any(|(k, _)| k.starts_with(DECODER_PREFIX)));
    let (sam, decoder) = SamModel::split_named(&named);
    assert_eq!(sam.len(), model.sam_var_store().variables().len());
    assert_eq!(
        decoder.len(),
        model.decoder_var_store().unwrap().variables().len()
    );

    tch::manual_seed(18);
    let other = SamModel::new(&SamConfig::tiny(), Some(&tiny_decoder()), Device::Cpu).unwrap();
    let report = other.load_named(&named, LoadMode::Strict).unwrap();
    assert!(report.sam.is_exact() && report.decoder.unwrap().is_exact());
    assert_same_weights(&model, &other);

    // Decoder weights for a model without a decoder are refused, naming one of them.
    let sam_only = SamModel::new(&SamConfig::tiny(), None, Device::Cpu).unwrap();
    match sam_only.load_named(&named, LoadMode::Strict).unwrap_err() {
        SamModelError::UnexpectedDecoder { count, example } => {
            assert_eq!(count, decoder.len());
            assert!(example.starts_with(DECODER_PREFIX), "{example}");
        }
        other => panic!("expected UnexpectedDecoder, got {other:?}"),
    }
}
