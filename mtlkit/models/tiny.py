"""A deliberately small multi-task encoder-decoder for tests, ``mtlkit doctor`` and the unit preset."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import OutputLayer, register_model


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _task_kind(task: str) -> str:
    from mtlkit.tasks import TASK_KINDS

    if task not in TASK_KINDS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASK_KINDS)}")
    return TASK_KINDS[task]


class TinyMTLNet(nn.Module):
    """Shared conv encoder (stride 4) + shared decoder + one head per task.

    Args:
        tasks: task name -> output channels.
        width: channels of the first stage (the second has ``2 * width``).
    Shapes: images [B,3,H,W] -> dense tasks [B,C_t,H,W]; image-level tasks [B,C_t]; boxes [B,4] xyxy pixels.
    """

    def __init__(self, tasks: dict[str, int], width: int = 8) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.kinds = {t: _task_kind(t) for t in tasks}
        self.encoder = nn.Sequential(conv_bn_relu(3, width, 2), conv_bn_relu(width, 2 * width, 2))  # [B,2w,H/4,W/4]
        self.decoder = conv_bn_relu(2 * width, width)  # [B,w,H/4,W/4]
        heads = {}
        for task, channels in tasks.items():
            if self.kinds[task] == "dense":
                heads[task] = nn.Conv2d(width, channels, 1)
            else:  # image-level logits or one box per image, from globally pooled encoder features
                heads[task] = nn.Linear(2 * width, channels)
        self.heads = nn.ModuleDict(heads)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = images.shape[-2:]
        feats = self.encoder(images)
        dense = self.decoder(feats)
        pooled = feats.mean(dim=(2, 3))  # [B,2w]
        out: dict[str, torch.Tensor] = {}
        for task, head in self.heads.items():
            kind = self.kinds[task]
            if kind == "dense":
                out[task] = F.interpolate(head(dense), size=(h, w), mode="bilinear", align_corners=False)
            elif kind == "box":
                # predict centre and size in [0, 1] so that x2 >= x1 always; then pixels xyxy
                cx, cy, bw, bh = torch.sigmoid(head(pooled)).unbind(-1)
                box = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
                out[task] = box * box.new_tensor([w, h, w, h])
            else:
                out[task] = head(pooled)
        return out

    def output_layer(self, task: str) -> OutputLayer:
        """The head of ``task`` (a 1x1 conv or a linear layer; boxes pass through a sigmoid after it)."""
        return OutputLayer(self.heads[task], slice(None))


@register_model("tiny", smoke={"width": 8},
                smoke_tasks={"semseg": 4, "depth": 1, "normals": 3, "scene": 3, "boxes": 4})
def tiny(tasks: dict[str, int], width: int = 8) -> TinyMTLNet:
    return TinyMTLNet(tasks, width=width)
