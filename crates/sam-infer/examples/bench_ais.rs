//! AIS benchmark, the Rust side (run by `benches/bench_ais.sh`, not a test).
//!
//! `bench_ais DIR TILE HALO BATCH`: loads `DIR/vit_b_ais_random.pt`, segments
//! `DIR/image_2048.tif` with tiles TILE² and halo HALO, and prints the seconds per stage as JSON.
//! When `DIR/micro_sam_maps.f32` exists (written by the Python peer), also times our
//! post-processing on micro_sam's own decoder maps and reports the pixel agreement with
//! micro_sam's untiled post-processing of the same maps.
//!
//! `bench_ais DIR post N`: only the post-processing of micro_sam's maps, N times (profiling).

use std::path::Path;
use std::time::Instant;

use sam_data::Plane;
use sam_infer::{ais_segment, load_image, AisParams, DecoderMaps, InferenceModel, TileSpec};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // jemalloc (linked in) serves every allocation, libtorch's included; keep freed memory
    // for reuse (see sam_cli::memory).
    sam_cli::use_linked_jemalloc!();
    sam_cli::memory::retain_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[2] == "post" {
        let maps = read_micro_sam_maps(Path::new(&args[1]))?;
        for _ in 0..args[3].parse::<usize>()? {
            let start = Instant::now();
            let seg = ais_segment(&maps, &AisParams::default())?;
            let objects = seg.as_slice().iter().copied().max().unwrap_or(0);
            println!(
                "post-processing: {:.3} s, {objects} objects",
                start.elapsed().as_secs_f64()
            );
        }
        return Ok(());
    }
    if args.len() != 5 {
        return Err("usage: bench_ais DIR TILE HALO BATCH".into());
    }
    let dir = Path::new(&args[1]);
    let (tile, halo, batch): (usize, usize, usize) =
        (args[2].parse()?, args[3].parse()?, args[4].parse()?);

    let start = Instant::now();
    let model = InferenceModel::load(&dir.join("vit_b_ais_random.pt"), tch::Device::Cpu)?;
    let load_s = start.elapsed().as_secs_f64();
    let (_, image) = load_image(
        &dir.join("image_2048.tif"),
        &sam_data::Normalization::default(),
    )?;
    let tiling = TileSpec {
        tile_shape: Some((tile, tile)),
        halo: (halo, halo),
    }
    .tiling_for(image.shape(), model.input_size())?;
    let tiles = tiling.tiles();

    let start = Instant::now();
    let emb = model.embed_tiles(&image, &tiles, batch, &mut || {})?;
    let embed_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let maps = model.decoder_maps(&tiling, &emb, batch, &mut || {})?;
    let decode_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let labels = ais_segment(&maps, &AisParams::default())?;
    let post_s = start.elapsed().as_secs_f64();
    let objects = labels.as_slice().iter().copied().max().unwrap_or(0);

    let mut extra = String::new();
    let ref_maps = dir.join("micro_sam_maps.f32");
    if ref_maps.is_file() {
        let (h, w) = image.shape();
        let n = h * w;
        let m = read_micro_sam_maps(dir)?;
        let start = Instant::now();
        let seg = ais_segment(&m, &AisParams::default())?;
        let s = start.elapsed().as_secs_f64();
        let reference: Vec<u32> = std::fs::read(dir.join("micro_sam_untiled_labels.u32"))?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let same = seg
            .as_slice()
            .iter()
            .zip(&reference)
            .filter(|(a, b)| a == b)
            .count();
        extra = format!(
            ", \"postprocess_on_micro_sam_maps_s\": {s:.3}, \"objects_on_micro_sam_maps\": {}, \"agreement_with_micro_sam_untiled\": {:.5}",
            seg.as_slice().iter().copied().max().unwrap_or(0),
            same as f64 / n as f64
        );
    }
    println!(
        "{{\"threads\": {}, \"rayon_threads\": {}, \"tiles\": {}, \"load_s\": {load_s:.2}, \"embed_s\": {embed_s:.2}, \"decode_s\": {decode_s:.2}, \"postprocess_s\": {post_s:.3}, \"total_s\": {:.2}, \"objects\": {objects}{extra}}}",
        tch::get_num_threads(),
        rayon::current_num_threads(),
        tiles.len(),
        embed_s + decode_s + post_s
    );
    Ok(())
}

/// micro_sam's decoder maps of the 2048² image, as the Python peer wrote them.
fn read_micro_sam_maps(dir: &Path) -> Result<DecoderMaps, Box<dyn std::error::Error>> {
    let (h, w) = (2048, 2048);
    let n = h * w;
    let raw: Vec<f32> = std::fs::read(dir.join("micro_sam_maps.f32"))?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if raw.len() != 3 * n {
        return Err(format!("micro_sam_maps.f32 holds {} values, not 3×2048²", raw.len()).into());
    }
    Ok(DecoderMaps {
        foreground: Plane::from_vec(h, w, raw[..n].to_vec())?,
        center_distances: Plane::from_vec(h, w, raw[n..2 * n].to_vec())?,
        boundary_distances: Plane::from_vec(h, w, raw[2 * n..].to_vec())?,
    })
}
