"""Reference fixtures for sam-infer's APG (automatic prompt generation) against micro_sam 1.8.

Builds a seeded brightfield-like image (dark round objects on a bright background) and the
decoder maps a well-trained UNETR would give for it (foreground, centre distance, boundary
distance derived from the objects, plus noise), and a tiny random-weight SAM (the sizes of
`SamConfig::tiny()`, built and perturbed as crates/sam-model/tests/python/make_parity.py does it). Random
mask-decoder logits hover around 0, where the 0 threshold would turn float noise into different
masks; the last layers of the hypernetwork MLPs are therefore scaled by 100 and the IoU head's
bias raised by 0.8, so that logits are far from the threshold and predicted IoUs look like a
trained model's. The masks themselves stay those of a random model (large overlapping blobs),
which exercises the NMS and the exclusive merge hard.

micro_sam's `AutomaticPromptGenerator` runs on the image embeddings computed the way sam-infer's
predictor computes them (grey [0, 1] → 0..255 RGB → antialiased bilinear resize of the long
side → SAM preprocessing → encoder; the path sam-model's parity test checks), with the crafted
maps set as its decoder outputs (`initialize` would run the random UNETR). One case per
parameter set of CASES.

Usage: make_apg_reference.py make OUT_DIR (sam_testkit::script_fixtures). Writes:
  sam.pth                   the SAM state_dict (torch.save, as segment_anything writes it)
  image.f32                 the normalised image, row-major little-endian float32
  embeddings.f32            the image embeddings [1, 32, 16, 16]
  maps.f32                  foreground, centre distances, boundary distances (3 planes)
  <case>.micro_sam.u32      micro_sam's instance labels
  <case>.points.f32         micro_sam's point prompts (x, y) in image pixels
  <case>.masks.u8           the masks micro_sam's NMS receives (one image-sized plane each)
  <case>.scores.f32         their predicted IoU and stability score (pairs)
  meta.json                 shape, cases (name, params, square: whether the case runs on the
                            top-left square of the image, n_objects, n_prompts, n_masks)
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "sam-testkit", "python"))
from sam_fixtures import (  # noqa: E402
    distance_targets, make_command, perturb, random_ellipses, tiny_sam as build_tiny_sam, write_json,
)

torch.set_num_threads(1)

DEFAULTS = {"min_size": 25, "center_distance_threshold": 0.5, "boundary_distance_threshold": 0.5,
            "foreground_threshold": 0.5, "multimasking": False, "batch_size": 32,
            "nms_threshold": 0.9, "intersection_over_min": False, "refine_with_box_prompts": False}
SHAPE = (160, 192)
N_OBJECTS = 24
CASES = [
    # name, generate() parameters beyond micro_sam's defaults
    ("default", {}),
    ("iomin", {"intersection_over_min": True, "nms_threshold": 0.5, "min_size": 60,
               "center_distance_threshold": 0.4, "foreground_threshold": 0.6}),
    ("multimask", {"multimasking": True, "nms_threshold": 0.8, "batch_size": 7}),
    ("refine", {"refine_with_box_prompts": True, "min_size": 10}),
]


def tiny_sam():
    torch.manual_seed(0)
    sam = build_tiny_sam().eval()
    perturb(sam)
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(100.0)
            mlp.layers[-1].bias.mul_(100.0)
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.add_(0.8)
    return sam


def scene(rng):
    gt = random_ellipses(rng, SHAPE, N_OBJECTS, margin=6, radii=(5, 11))
    image = np.where(gt > 0, 0.25, 0.8) + rng.normal(0, 0.04, SHAPE)
    image = np.clip(ndi.gaussian_filter(image, 1.0), 0, 1).astype(np.float32)
    # What a trained decoder predicts: torch_em's per-object distance targets, blurred, noisy.
    fg = (gt > 0).astype(np.float32)
    center, boundary = distance_targets(gt)
    noise = lambda s: rng.normal(0, s, SHAPE).astype(np.float32)
    fg = np.clip(0.05 + 0.9 * ndi.gaussian_filter(fg, 0.8) + noise(0.1), 0, 1).astype(np.float32)
    center = np.clip(center + noise(0.06), 0, 1).astype(np.float32)
    boundary = np.clip(boundary + noise(0.06), 0, 1).astype(np.float32)
    return image, fg, center, boundary


@torch.no_grad()
def main(out):
    from segment_anything import SamPredictor
    from segment_anything.utils.transforms import ResizeLongestSide
    from micro_sam.inference import batched_inference
    from micro_sam.instance_segmentation import (
        AutomaticPromptGenerator, _derive_box_prompts, _derive_point_prompts,
    )
    from micro_sam.util import apply_nms

    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(11)
    image, fg, center, boundary = scene(rng)
    sam = tiny_sam()
    torch.save(sam.state_dict(), os.path.join(out, "sam.pth"))

    def predictor_for(img):
        # sam-infer's predictor path (see make_parity.py, "the predictor path").
        x = (torch.from_numpy(np.ascontiguousarray(img)) * 255)[None, None].repeat(1, 3, 1, 1)
        target = ResizeLongestSide.get_preprocess_shape(*img.shape, sam.image_encoder.img_size)
        x = F.interpolate(x, target, mode="bilinear", align_corners=False, antialias=True)
        predictor = SamPredictor(sam)
        predictor.features = sam.image_encoder(sam.preprocess(x))
        predictor.original_size = img.shape
        predictor.input_size = tuple(x.shape[-2:])
        predictor.is_image_set = True
        return predictor

    # micro_sam's batched_inference maps prompts with a hard-coded ResizeLongestSide(1024), the
    # input side of every SAM it ships; the tiny model's input is 256 px, which sam-infer (and
    # segment_anything's predictor) read from the model. Patched to the model's side here.
    import micro_sam.inference
    micro_sam.inference.ResizeLongestSide = lambda _: ResizeLongestSide(sam.image_encoder.img_size)

    h, w = SHAPE
    predictor = predictor_for(image)
    image.astype("<f4").tofile(os.path.join(out, "image.f32"))
    predictor.features.numpy().astype("<f4").tofile(os.path.join(out, "embeddings.f32"))
    np.stack([fg, center, boundary]).astype("<f4").tofile(os.path.join(out, "maps.f32"))
    full = (image, fg, center, boundary, predictor)
    meta = {"height": h, "width": w, "cases": []}
    for name, over in CASES:
        # micro_sam's box refinement clips x with the image height and y with its width
        # (`_derive_box_prompts`); sam-infer clips each with its own side. The two agree on
        # square images: the refinement case runs on the top-left square of the image.
        square = over.get("refine_with_box_prompts", False)
        if square:
            s = min(h, w)
            image_c, fg, center, boundary = (a[:s, :s].copy() for a in full[:4])
            predictor = predictor_for(image_c)
        else:
            image_c, fg, center, boundary, predictor = full
        segmenter = AutomaticPromptGenerator(predictor, decoder=None)
        # What `initialize` sets from the decoder's output.
        segmenter._foreground, segmenter._center_distances, segmenter._boundary_distances = fg, center, boundary
        segmenter._i = None
        segmenter._is_initialized = True
        seg = segmenter.generate(**over)
        # The masks `generate` hands to its NMS, through micro_sam's own functions as `generate`
        # calls them: for the staged comparison (masks, then NMS + merge on identical masks).
        params = dict(DEFAULTS, **over)
        prompts = _derive_point_prompts(
            fg, center, boundary,
            foreground_threshold=params["foreground_threshold"],
            center_distance_threshold=params["center_distance_threshold"],
            boundary_distance_threshold=params["boundary_distance_threshold"],
        )
        kw = dict(image=None, batch_size=params["batch_size"], return_instance_segmentation=False,
                  multimasking=params["multimasking"], mask_threshold=None)
        predictions = batched_inference(predictor, **kw, **prompts)
        if params["refine_with_box_prompts"]:
            predictions = batched_inference(predictor, **kw, **_derive_box_prompts(predictions, 0.01))
        again = apply_nms(predictions, min_size=params["min_size"], nms_thresh=params["nms_threshold"],
                          intersection_over_min=params["intersection_over_min"])
        assert (again == seg).all(), name
        masks = np.stack([p["segmentation"].numpy() for p in predictions]).astype(np.uint8)
        masks.tofile(os.path.join(out, f"{name}.masks.u8"))
        np.array([[p["predicted_iou"], p["stability_score"]] for p in predictions], "<f4").tofile(
            os.path.join(out, f"{name}.scores.f32"))
        points = prompts["points"][:, 0, :].astype("<f4")
        points.tofile(os.path.join(out, f"{name}.points.f32"))
        seg.astype("<u4").tofile(os.path.join(out, f"{name}.micro_sam.u32"))
        meta["cases"].append({"name": name, "params": over, "square": square,
                              "n_objects": int(len(np.unique(seg)) - 1),
                              "n_prompts": int(len(points)), "n_masks": int(len(predictions))})
    write_json(out, "meta.json", meta)


if __name__ == "__main__":
    make_command(main, __doc__)
