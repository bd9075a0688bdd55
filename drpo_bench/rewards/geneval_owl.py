"""GenEval-style compositional reward with an open-vocabulary detector (OWLv2).

GenEval (Ghosh et al., 2023) checks objects, counts, colors and positions with Mask2Former plus
a CLIP color classifier. This reward follows its rules with one model, transformers'
``Owlv2ForObjectDetection`` (default ``google/owlv2-base-patch16-ensemble``), so it needs no
mmdetection install:

- objects and counts: the prompt's nouns are the text queries; a detection is a patch whose
  sigmoid score passes ``threshold``, de-duplicated by NMS; "a"/"an" need ≥ 1, a number word
  needs exactly that many (``geneval_parse``);
- colors: for the object's best box, which of "a {color} {object}" (GenEval's 10 colors) scores
  highest on that box, with OWLv2's own text-box similarity instead of a separate CLIP;
- position: centers of the two objects' best boxes differ by more than ``margin`` (fraction of
  the image side) in the named direction.

Score: 1.0 when every constraint holds (GenEval's per-image "correct"), else 0.0; with
``partial_credit`` the fraction of constraints that hold. Prompts outside GenEval's templates
score 0 (or raise with ``strict_prompts``). Black box, non-differentiable. It is GenEval-*style*:
numbers are not comparable with the official GenEval scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from drpo_bench.errors import UserError
from drpo_bench.generators.diffusers_common import resolve_device
from drpo_bench.registry import REWARDS, StrictConfig
from drpo_bench.rewards.base import Reward
from drpo_bench.rewards.clip_common import load_hf
from drpo_bench.rewards.geneval_parse import COLORS, ObjectSpec, PromptSpec, parse_prompt
from drpo_bench.rewards.jpeg import to_uint8_hwc
from drpo_bench.weights import resolve_folder


class GenEvalOwlConfig(StrictConfig):
    pretrained: str = "google/owlv2-base-patch16-ensemble"  # OWLv2 weights + processor (hub id or folder)
    threshold: float = 0.3  # detection score cut; GenEval uses 0.3 for its detector
    nms_iou: float = 0.5  # boxes of one object overlapping more than this are one detection
    margin: float = 0.1  # position: centers must differ by this fraction of the image side
    partial_credit: bool = False  # False: GenEval's all-or-nothing per image; True: fraction of constraints
    strict_prompts: bool = False  # raise on prompts outside GenEval's templates instead of scoring 0
    device: str = "auto"  # "auto" = cuda if available, else cpu


@REWARDS.register("geneval-owl")
class GenEvalOwl(Reward):
    """GenEval-style object/count/color/position checks with OWLv2; 1 if all hold."""

    Config: ClassVar[type[StrictConfig]] = GenEvalOwlConfig
    differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = True
    scale: ClassVar[str] = "1 if every constraint holds else 0 (fraction with partial_credit)"
    report_scale: ClassVar[float] = 100.0  # percent of images correct, as the paper's GenEval table prints
    definition: ClassVar[dict[str, str]] = {
        "model": "google/owlv2-base-patch16-ensemble (GenEval-style rules; not the official Mask2Former GenEval)",
        "version": "all-or-nothing",
        "formula": "100 * [every object/count/color/position constraint of the prompt holds] (percent correct)",
        "score": "1 if every constraint holds else 0",
    }
    #: the definition for ``partial_credit: true``
    partial_definition: ClassVar[dict[str, str]] = {
        "model": "google/owlv2-base-patch16-ensemble (GenEval-style rules; not the official Mask2Former GenEval)",
        "version": "partial credit",
        "formula": "100 * (constraints of the prompt that hold) / (constraints of the prompt)",
        "score": "(constraints that hold) / (constraints)",
    }

    def __init__(self, config: GenEvalOwlConfig) -> None:
        from transformers import Owlv2ForObjectDetection, Owlv2Processor

        self.config = config
        self.device = resolve_device(config.device)
        folder = self.folder()
        hint = "google/owlv2-base-patch16-ensemble"
        self.processor = load_hf(Owlv2Processor, folder, "OWLv2 processor", hint)
        self.model = load_hf(Owlv2ForObjectDetection, folder, "OWLv2", hint).requires_grad_(False).eval().to(self.device)
        base = self.partial_definition if config.partial_credit else self.definition
        self.definition = {**base, "model": f"{config.pretrained or base['model']} (GenEval-style rules, threshold "  # type: ignore[misc]
                                            f"{config.threshold}; not the official Mask2Former GenEval)"}

    def folder(self) -> Path:
        return resolve_folder(self.config.pretrained, what="OWLv2 weights", must_contain=("config.json",),
                              hub_id="google/owlv2-base-patch16-ensemble")

    def to(self, device: torch.device | str) -> GenEvalOwl:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    # ---- detection ---------------------------------------------------------------------------
    @torch.no_grad()
    def _detect(self, image: Any, queries: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """One uint8 (H, W, 3) image and Q queries -> scores (P, Q) in [0, 1], boxes (P, 4) cxcywh in [0, 1]."""
        inputs = self.processor(text=[queries], images=[image], return_tensors="pt").to(self.device)
        out = self.model(**inputs)
        return out.logits[0].sigmoid().float().cpu(), out.pred_boxes[0].float().cpu()

    def _instances(self, scores: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """Patch indices kept for one query after threshold and NMS, best first."""
        from torchvision.ops import box_convert, nms

        keep = (scores >= self.config.threshold).nonzero().flatten()
        if keep.numel() == 0:
            return keep
        xyxy = box_convert(boxes[keep], "cxcywh", "xyxy")
        return keep[nms(xyxy, scores[keep], self.config.nms_iou)]

    def check(self, image: Any, spec: PromptSpec) -> list[bool]:
        """One bool per constraint of ``spec`` (objects/counts, then colors, then the relation)."""
        objects = list(spec.objects)
        color_objects = [o for o in objects if o.color is not None]
        queries = [f"a photo of a {o.name}" for o in objects]
        queries += [f"a photo of a {c} {o.name}" for o in color_objects for c in COLORS]
        scores, boxes = self._detect(image, queries)  # (P, Q), (P, 4)
        found = [self._instances(scores[:, i], boxes) for i in range(len(objects))]
        results = [self._count_ok(o, f) for o, f in zip(objects, found, strict=True)]
        for k, obj in enumerate(color_objects):
            idx = found[objects.index(obj)]
            if idx.numel() == 0:
                results.append(False)
                continue
            start = len(objects) + k * len(COLORS)
            color_scores = scores[idx[0], start : start + len(COLORS)]  # (10,) on the best box
            results.append(COLORS[int(color_scores.argmax())] == obj.color)
        if spec.relation is not None:
            a, b = found[0], found[1]
            results.append(bool(a.numel() and b.numel()) and self._relation_ok(boxes[a[0]], boxes[b[0]], spec.relation))
        return results

    @staticmethod
    def _count_ok(obj: ObjectSpec, found: torch.Tensor) -> bool:
        return found.numel() >= 1 if obj.count is None else found.numel() == obj.count

    def _relation_ok(self, box_a: torch.Tensor, box_b: torch.Tensor, relation: str) -> bool:
        dx, dy = float(box_a[0] - box_b[0]), float(box_a[1] - box_b[1])  # image y grows downwards
        m = self.config.margin
        return {"left of": dx < -m, "right of": dx > m, "above": dy < -m, "below": dy > m}[relation]

    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        out = []
        for image, prompt in zip(to_uint8_hwc(images), prompts, strict=True):
            try:
                spec = parse_prompt(prompt)
            except ValueError as exc:
                if self.config.strict_prompts:
                    raise UserError(f"geneval-owl cannot parse prompt {prompt!r}: {exc}") from exc
                out.append(0.0)
                continue
            ok = self.check(image, spec)
            out.append(sum(ok) / len(ok) if self.config.partial_credit else float(all(ok)))
        return torch.tensor(out, dtype=torch.float32)


REWARDS.preset(
    "geneval-owl-tiny", GenEvalOwl,
    # random weights score everything low: threshold 0 keeps detections so every rule runs; partial credit grades
    {"pretrained": "tiny:owlv2", "threshold": 0.0, "partial_credit": True, "device": "cpu"},
    "the GenEval-style OWLv2 reward on a tiny random-init OWLv2 (tiny:owlv2): tests",
)
