"""Exploration only: a shapes encoder trained with attribute supervision plus MAE reconstruction.

Renders training prompts, and asks the encoder's stage 3 to predict which (shape, color) has its
center in each 4x4 cell and how many objects of each shape and color there are, beside the MAE
reconstruction of `drpo_bench.shapes.train_encoder`; half the images are blurred, like the
generator's soft blobs. Used in docs/quickstart-sweep.md through the feature encoder's `weights`:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/explore/train_perception_encoder.py /tmp/perc.safetensors 600
    ... args: {..., feature_args: {weights: /tmp/perc.safetensors}}
"""
import random, sys, time, numpy as np, torch, torch.nn.functional as F
from torch import nn
from drpo_bench.shapes.encoder_model import EncoderArch, ReconstructionHead, ShapesEncoderNet
from drpo_bench.shapes.train_encoder import corrupt, reconstruction_loss, save
from drpo_bench.shapes.pretrain_generator import warmup_cosine
from drpo_bench.shapes.grammar import random_prompt, parse, SHAPES
from drpo_bench.shapes.render import layout, draw, SIZE
torch.set_num_threads(1)
NS, NC = len(SHAPES), 6
def batch(n, rng, np_rng):
    imgs = np.zeros((n, 3, SIZE, SIZE), np.float32); occ = np.zeros((n, NS * NC, 4, 4), np.float32); cnt = np.zeros((n, NS + NC), np.float32)
    for i in range(n):
        objs = layout(parse(random_prompt(rng).text), np_rng); draw(objs, imgs[i])
        for shape, ci, y, x, s in objs:
            si = SHAPES.index(shape); cy, cx = (y + s / 2) // 8, (x + s / 2) // 8
            occ[i, si * NC + ci, int(min(cy, 3)), int(min(cx, 3))] = 1; cnt[i, si] += 1; cnt[i, NS + ci] += 1
    return torch.from_numpy(imgs), torch.from_numpy(occ), torch.from_numpy(cnt)
def augment(x, gen):
    # blur some images (the generator's outputs are soft blobs), then the MAE corruption
    b = x.shape[0]; k = torch.tensor([1., 4., 6., 4., 1.]); k = (k[:, None] * k[None]) / 256
    blurred = F.conv2d(x.reshape(-1, 1, SIZE, SIZE), k[None, None], padding=2).reshape_as(x)
    pick = (torch.rand(b, 1, 1, 1, generator=gen) < 0.5).float()
    return corrupt(pick * blurred + (1 - pick) * x, gen)
def main(out, steps=600, seed=0, w_attr=1.0):
    torch.manual_seed(seed); rng, np_rng, gen = random.Random(seed), np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    arch = EncoderArch(); enc, head = ShapesEncoderNet(arch), ReconstructionHead(arch)
    occ_head = nn.Conv2d(arch.widths[2], NS * NC, 1); cnt_head = nn.Linear(arch.widths[2], NS + NC)
    params = [*enc.parameters(), *head.parameters(), *occ_head.parameters(), *cnt_head.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-4); sched = warmup_cosine(opt, steps); t0 = time.time()
    for step in range(1, steps + 1):
        clean, occ, cnt = batch(64, rng, np_rng)
        h3 = enc(augment(clean, gen))[-1]
        rec = reconstruction_loss(head(h3), clean)
        attr = F.binary_cross_entropy_with_logits(occ_head(h3), occ) * 10 + F.mse_loss(cnt_head(h3.mean((2, 3))), cnt)
        loss = rec + w_attr * attr
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        if step % 100 == 0 or step == 1: print(step, round(float(rec), 4), round(float(attr), 4), round(time.time() - t0, 1), flush=True)
    save(enc, out, seed=seed, steps=steps, batch=64, lr=3e-3, first_loss=0.0, final_loss=float(loss), seconds=time.time() - t0)
if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
