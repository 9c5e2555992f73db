"""Hidden test splits for the problem sets that grade a trained model (PS1's hidden test, PS5's leaderboard).

The parent generates the split's images and labels; only the images enter the sandbox, the labels stay in this
process. The split's seed is HMAC-SHA256(instructor secret, ``mtlkit-hidden-split:<assignment>``) cut to 64 bits:
each assignment gets its own split (a PS1 sandbox holds none of PS5's leaderboard images), and without the secret
the seed can be neither recomputed from mtlkit's public code nor searched for. See assignments/GRADING.md.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

import numpy as np

from mtlkit.grading.options import SECRET_ENV

__all__ = ["split_seed", "HiddenSplit", "score_predictions", "SEED_BITS"]

SEED_BITS = 64


def split_seed(assignment: str, secret: str) -> int:
    """The hidden split's generator seed: 64 bits of HMAC-SHA256 keyed by the secret over the assignment name."""
    if not secret:
        raise ValueError(f"a hidden split needs the instructor's secret ({SECRET_ENV} or --secret-seed)")
    mac = hmac.new(secret.encode(), f"mtlkit-hidden-split:{assignment}".encode(), hashlib.sha256).digest()
    return int.from_bytes(mac[: SEED_BITS // 8], "big")


def _digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()


def _collect(dataset, limit: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from mtlkit.data import collate

    batch = collate([dataset[i] for i in range(min(len(dataset), limit or len(dataset)))])
    return batch["image"].numpy(), {"semseg": batch["semseg"].numpy(), "depth": batch["depth"].numpy()}


class HiddenSplit:
    """One assignment's test images: the public split (the notebook's) and the hidden one (the secret's).

    ``thresholds``: preset -> the assignment's scoring thresholds (it names the valid presets). The labels of every
    image set handed to a probe are kept here, by the images' digest, for the checks.
    """

    def __init__(self, assignment: str, thresholds: Mapping[str, tuple], images: int = 128):
        self.assignment, self.thresholds, self.images = assignment, dict(thresholds), images
        self._labels: dict[str, dict[str, np.ndarray]] = {}

    def preset(self) -> str:
        preset = os.environ.get("MTLKIT_PRESET", "smoke")
        if preset not in self.thresholds:
            raise ValueError(f"MTLKIT_PRESET={preset!r}; valid presets: {', '.join(self.thresholds)}")
        return preset

    def seed(self) -> int:
        secret = os.environ.get(SECRET_ENV)
        if not secret:
            raise RuntimeError(f"{self.assignment}'s hidden split needs the instructor's secret: set {SECRET_ENV} "
                               "(or pass --secret-seed)")
        return split_seed(self.assignment, secret)

    def public(self, preset: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The test split the notebook evaluates on (the preset's dataset, seed 0)."""
        from mtlkit.course import deeplab_schedule, load_splits

        schedule = deeplab_schedule(preset)
        return _collect(load_splits(schedule["data"], schedule["data_preset"], seed=0)["test"])

    def hidden(self, preset: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """A synthetic-city test split from the secret's seed (never cached on disk, so the child cannot find it).

        The paper preset trains on real MiniScapes images, which no seed can regenerate: there the real test split
        stands in for the hidden one.
        """
        from mtlkit.data import get_dataset

        if preset == "paper":
            return self.public(preset)
        dataset = get_dataset("synthetic-city", "test", preset=preset, seed=self.seed(), cache=False)
        return _collect(dataset, self.images)

    def _hand_out(self, images: np.ndarray, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._labels[_digest(images)] = labels
        return {"images": images}

    def public_inputs(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Probe inputs: the public test images (to verify a reported score); the labels stay here."""
        return self._hand_out(*self.public(self.preset()))

    def hidden_inputs(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Probe inputs: the hidden split's images; the labels stay here."""
        return self._hand_out(*self.hidden(self.preset()))

    def labels_for(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The labels of images this split handed out (regenerated when another process handed them out)."""
        key = _digest(images)
        if key not in self._labels:
            preset = self.preset()
            for regenerated, labels in (self.hidden(preset), self.public(preset)):
                self._labels[_digest(regenerated)] = labels
        if key not in self._labels:
            raise RuntimeError("these images are neither this assignment's hidden split nor its public test split")
        return self._labels[key]


def score_predictions(semseg: np.ndarray, depth: np.ndarray, labels: Mapping[str, np.ndarray]) -> dict[str, float]:
    """mIoU, SI-log and grader score of predicted labels/depth against ``labels`` with the registry's meters.
    Raises ValueError (the student's message) on predictions of the wrong shape or range."""
    import torch

    from mtlkit.metrics import grader_score
    from mtlkit.tasks import make_task

    n, h, w = labels["semseg"].shape
    if semseg.shape != (n, h, w) or depth.shape != (n, 1, h, w):
        raise ValueError(f"predictions have shapes semseg {semseg.shape}, depth {depth.shape}; expected semseg "
                         f"{(n, h, w)} (class labels) and depth {(n, 1, h, w)} (metres)")
    if semseg.size and (semseg.min() < 0 or semseg.max() >= 19):
        raise ValueError(f"semseg labels must lie in [0, 19); got values from {semseg.min()} to {semseg.max()}")
    if not np.isfinite(depth).all():
        raise ValueError("the depth predictions contain NaN or infinite values")
    seg = make_task("semseg", num_classes=19).meter()
    dep = make_task("depth").meter()
    seg.update(torch.from_numpy(semseg.astype(np.int64)), torch.from_numpy(labels["semseg"]))
    dep.update(torch.from_numpy(depth.astype(np.float32)), torch.from_numpy(labels["depth"]))
    scores = {"miou": seg.compute()["miou"], "si_log_rmse": dep.compute()["si_log_rmse"]}
    scores["grader_score"] = grader_score(scores["miou"], scores["si_log_rmse"])
    return scores
