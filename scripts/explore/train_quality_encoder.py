"""Exploration only: an encoder trained to see synthetic generator-like failures (blur, hue mixing,
warping, specks) beside object counts and MAE reconstruction (docs/quickstart-sweep.md).

    .venv/bin/python scripts/explore/train_quality_encoder.py /tmp/qual.safetensors 600 2
    .venv/bin/python scripts/feature_neighborhoods.py --encoder-weights /tmp/qual.safetensors
"""
import random, sys, time, numpy as np, torch, torch.nn.functional as F
from torch import nn
from drpo_bench.shapes.encoder_model import EncoderArch, ReconstructionHead, ShapesEncoderNet
from drpo_bench.shapes.train_encoder import reconstruction_loss, save
from drpo_bench.shapes.pretrain_generator import warmup_cosine
from drpo_bench.shapes.grammar import random_prompt, parse, SHAPES, COLORS
from drpo_bench.shapes.render import layout, draw, SIZE
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
PALETTE = torch.tensor(list(COLORS.values()), dtype=torch.float32)  # (C, 3)
NS, NC = len(SHAPES), len(COLORS)
def rendered(n, rng, np_rng):
    imgs = np.zeros((n, 3, SIZE, SIZE), np.float32); cnt = np.zeros((n, NS + NC), np.float32)
    for i in range(n):
        objs = layout(parse(random_prompt(rng).text), np_rng); draw(objs, imgs[i])
        for shape, ci, y, x, s in objs:
            cnt[i, SHAPES.index(shape)] += 1; cnt[i, NS + ci] += 1
    return torch.from_numpy(imgs), torch.from_numpy(cnt)
def corrupt(x, g):
    b = x.shape[0]
    lvl = torch.rand(b, 4, generator=g) * (torch.rand(b, 4, generator=g) < 0.6).float()  # blur, hue, warp, specks in [0,1]
    # warp: smooth random displacement
    disp = F.interpolate(torch.randn(b, 2, 4, 4, generator=g), size=(SIZE, SIZE), mode='bicubic', align_corners=False)
    base = F.affine_grid(torch.eye(2, 3)[None].expand(b, -1, -1), (b, 3, SIZE, SIZE), align_corners=False)
    grid = base + disp.permute(0, 2, 3, 1) * lvl[:, 2, None, None, None] * (4.0 / SIZE)
    x = F.grid_sample(x, grid, align_corners=False, padding_mode='zeros')
    # hue mixing: blend toward a random palette color along a random linear ramp
    other = PALETTE[torch.randint(0, NC, (b,), generator=g)]  # (B, 3)
    ang = torch.rand(b, generator=g) * 6.283
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, SIZE), torch.linspace(-1, 1, SIZE), indexing='ij')
    ramp = ((torch.cos(ang)[:, None, None] * xx + torch.sin(ang)[:, None, None] * yy) * 0.5 + 0.5)[:, None]  # (B,1,H,W)
    fg = x.amax(1, keepdim=True)
    mix = (ramp * lvl[:, 1, None, None, None]).clamp(0, 1)
    x = x * (1 - mix) + fg * other[:, :, None, None] * mix
    # specks
    for i in range(b):
        for _ in range(int(round(lvl[i, 3].item() * 3))):
            cy, cx = torch.randint(2, SIZE - 4, (2,), generator=g).tolist(); r = int(torch.randint(1, 3, (1,), generator=g))
            x[i, :, cy:cy + r, cx:cx + r] = PALETTE[torch.randint(0, NC, (1,), generator=g)][0][:, None, None]
    # blur
    sig = lvl[:, 0] * 1.5 + 1e-3
    k = torch.arange(-3, 4).float()
    ker = torch.exp(-(k[None] ** 2) / (2 * sig[:, None] ** 2)); ker = ker / ker.sum(1, keepdim=True)  # (B, 7)
    out = []
    for i in range(b):
        kk = ker[i]
        xi = F.conv2d(x[i:i+1].reshape(3, 1, SIZE, SIZE), kk.view(1, 1, 1, 7), padding=(0, 3))
        xi = F.conv2d(xi, kk.view(1, 1, 7, 1), padding=(3, 0))
        out.append(xi.reshape(1, 3, SIZE, SIZE))
    x = torch.cat(out)
    return (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1), lvl
def main(out, steps):
    seed = 0; torch.manual_seed(seed); rng, np_rng, g = random.Random(seed), np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    arch = EncoderArch(); enc, head = ShapesEncoderNet(arch), ReconstructionHead(arch)
    q_head = nn.Linear(sum(arch.widths) * 2, 4); cnt_head = nn.Linear(arch.widths[2], NS + NC)
    params = [*enc.parameters(), *head.parameters(), *q_head.parameters(), *cnt_head.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-4); sched = warmup_cosine(opt, steps); t0 = time.time()
    for step in range(1, steps + 1):
        clean, cnt = rendered(64, rng, np_rng)
        x, lvl = corrupt(clean, g)
        maps = enc(x)
        pooled = torch.cat([torch.cat([m.mean((2, 3)), m.std((2, 3))], 1) for m in maps], 1)
        q = F.mse_loss(q_head(pooled), lvl) * 10
        c = F.mse_loss(cnt_head(maps[2].mean((2, 3))), cnt)
        rec = reconstruction_loss(head(maps[2]), clean)
        loss = q + c + rec
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        if step % 100 == 0 or step == 1: print(step, round(float(q), 4), round(float(c), 4), round(float(rec), 4), round(time.time() - t0, 1), flush=True)
    save(enc, out, seed=seed, steps=steps, batch=64, lr=3e-3, first_loss=0.0, final_loss=float(loss), seconds=time.time() - t0)
if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
