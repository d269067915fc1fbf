# Reference check for the demo's learning speed: the demo's tiny SAM built with the Python
# segment_anything package, trained from random weights with box prompts (Dice loss, AdamW),
# printing the box-prompted IoU on held-out images every 50 steps. It answers whether a slow
# start is the architecture's or our implementation's (it found tch's wider default
# initialisation: see crates/sam-model/src/common.rs).
#
#   [PATCH=16|8] [NOBJ=8] [ALTERNATE=1] .venv/bin/python scripts/bench/sam_box_learning.py LR STEPS TRAIN_DIR VAL_DIR
#   e.g. after scripts/demo.sh:
#        PATCH=8 .venv/bin/python scripts/bench/sam_box_learning.py 1e-3 1000 dat/demo/augmented dat/demo/val
# (TRAIN_DIR and VAL_DIR hold images/ and labels/.) PATCH: patch size (the demo uses 8); NOBJ:
# objects per image and step; ALTERNATE=1: single-point starts (multimask, best of 3) on every
# other step, as micro_sam's recipe alternates them with boxes.
import glob, sys, time
from functools import partial
import numpy as np, tifffile, torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
torch.manual_seed(0); np.random.seed(0)
torch.set_num_threads(1)
ROOT = {'augmented': sys.argv[3], 'val': sys.argv[4]}
lr = float(sys.argv[1]) if len(sys.argv) > 1 else 1e-3
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300
import os
D, IMG = 64, 128
PATCH = int(os.environ.get('PATCH', '16'))
ALTERNATE = os.environ.get('ALTERNATE') == '1'  # point starts on every other step
sam = Sam(
    image_encoder=ImageEncoderViT(img_size=IMG, patch_size=PATCH, in_chans=3, embed_dim=64, depth=2, num_heads=2,
        mlp_ratio=4, out_chans=D, qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        use_rel_pos=True, window_size=4, global_attn_indexes=(1,)),
    prompt_encoder=PromptEncoder(embed_dim=D, image_embedding_size=(IMG // PATCH, IMG // PATCH), input_image_size=(IMG, IMG), mask_in_chans=16),
    mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=D, mlp_dim=8 * D, num_heads=2),
        transformer_dim=D, iou_head_depth=3, iou_head_hidden_dim=D),
)
def load(split):
    out = []
    for f in sorted(glob.glob(f'{ROOT[split]}/images/*.tif')):
        im = tifffile.imread(f).astype(np.float32)
        lo, hi = np.percentile(im, [1, 99.8]); im = np.clip((im - lo) / (hi - lo), 0, 1).astype(np.float32)
        lab = tifffile.imread(f.replace('/images/', '/labels/'))
        out.append((im, lab))
    return out
train, val = load('augmented'), load('val')
def boxes_masks(lab, ids):
    bs, ms = [], []
    for i in ids:
        ys, xs = np.nonzero(lab == i)
        bs.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]); ms.append(lab == i)
    return torch.tensor(bs, dtype=torch.float32), torch.tensor(np.stack(ms)[:, None], dtype=torch.float32)
def predict(im, boxes, points=None):
    x = torch.tensor(im)[None, None].repeat(1, 3, 1, 1) * 255
    x = sam.preprocess(x)
    emb = sam.image_encoder(x)
    pts = None if points is None else (points, torch.ones(points.shape[:2], dtype=torch.int64))
    sp, de = sam.prompt_encoder(points=pts, boxes=boxes, masks=None)
    low, iou = sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sp, de, points is not None)
    return sam.postprocess_masks(low, (IMG, IMG), (IMG, IMG))
def val_iou():
    r = []
    with torch.no_grad():
        for im, lab in val:
            ids = np.unique(lab)[1:]
            b, m = boxes_masks(lab, ids)
            p = predict(im, b) > 0
            inter = (p & (m > 0)).flatten(1).sum(1).float(); uni = (p | (m > 0)).flatten(1).sum(1).float()
            r += (inter / uni.clamp(min=1)).tolist()
    return float(np.mean(r))
opt = torch.optim.AdamW(sam.parameters(), lr=lr, weight_decay=0.01)
t0 = time.time()
for step in range(1, steps + 1):
    loss = 0
    for _ in range(2):
        im, lab = train[np.random.randint(len(train))]
        ids = np.unique(lab)[1:]; ids = np.random.choice(ids, min(int(os.environ.get('NOBJ', '8')), len(ids)), replace=False)
        b, m = boxes_masks(lab, ids)
        if ALTERNATE and step % 2 == 0:
            # micro_sam's other start: one positive point per object, three masks, the best counts.
            pts = []
            for i in ids:
                ys, xs = np.nonzero(lab == i); k = np.random.randint(len(ys)); pts.append([[xs[k], ys[k]]])
            p = torch.sigmoid(predict(im, None, torch.tensor(pts, dtype=torch.float32)))
            dice = 1 - (2 * (p * m).flatten(2).sum(2) + 1e-6) / (p.flatten(2).sum(2) + m.flatten(2).sum(2) + 1e-6)
            dice = dice.min(1).values
        else:
            p = torch.sigmoid(predict(im, b))
            dice = 1 - (2 * (p * m).flatten(1).sum(1) + 1e-6) / (p.flatten(1).sum(1) + m.flatten(1).sum(1) + 1e-6)
        loss = loss + dice.mean() / 2
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 50 == 0:
        print(f'step {step} loss {loss.item():.3f} val box IoU {val_iou():.3f} ({time.time() - t0:.0f} s)', flush=True)
