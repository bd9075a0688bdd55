"""Exploration only: which checker constraints separate the checker's top 4 of K=16 candidates from its bottom 4.

On the shipped shapes generator, 96 train prompts x 16 candidates (noise seed 0):

    .venv/bin/python scripts/explore/checker_breakdown.py

Prints, per constraint kind, the share satisfied among the bottom 4, all 16 and the top 4 of each
prompt (docs/quickstart-sweep.md, "What the checker ranks on").
"""
import random, torch, collections
import numpy as np
from drpo_bench.registry import REWARDS, PROMPTS, GENERATORS
from drpo_bench.generators.base import repeat_conditioning
from drpo_bench.shapes.checker import components, constraints
from drpo_bench.shapes.grammar import parse
torch.set_num_threads(2)
def build(r, name, args):
    e = r.get(name); return e.cls(e.parse_config(args))
gen = build(GENERATORS, 'shapes', {})
train = [p.text for p in build(PROMPTS, 'shapes', {}).split('train')]; random.Random(2).shuffle(train)
ps = train[:96]; K = 16
with torch.no_grad():
    img = gen.decode(gen.sample(gen.noise(len(ps)*K, torch.Generator().manual_seed(0)), repeat_conditioning(gen.encode(ps), K))).numpy()
stats = {'top': collections.defaultdict(list), 'bottom': collections.defaultdict(list), 'all': collections.defaultdict(list)}
for i, p in enumerate(ps):
    spec = parse(p); rows = []
    for k in range(K):
        comps = components(img[i*K+k]); c = constraints(spec, comps)
        rows.append((sum(c.values())/len(c), c, comps))
    order = sorted(range(K), key=lambda k: -rows[k][0])
    for group, idx in (('top', order[:4]), ('bottom', order[-4:]), ('all', order)):
        for k in idx:
            s, c, comps = rows[k]
            for name, ok in c.items():
                kind = name.split(':')[-1].split(' ')[0] if ':' in name else ('relation' if name.startswith('relation') else 'n_objects')
                stats[group][kind].append(ok)
            stats[group]['#components - wanted'].append(len(comps) - spec.n_objects)
            stats[group]['unknown shape share'].append(np.mean([x.shape == 'unknown' for x in comps]) if comps else 0)
for kind in stats['all']:
    print(f"{kind:24s}", '  '.join(f"{g} {np.mean(stats[g][kind]):+.3f}" for g in ('bottom', 'all', 'top')))
