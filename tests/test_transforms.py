"""Task-aware transforms on hand-made samples with exact expectations."""
from __future__ import annotations

import pytest
import torch

from mtlkit.data.transforms import ColorJitter, Compose, RandomHorizontalFlip, RandomScaleCrop


def make_sample(h: int = 4, w: int = 4) -> dict:
    """A small contract sample whose every pixel is distinguishable."""
    n = h * w
    normals = torch.zeros(3, h, w)
    normals[0, :, : w // 2] = 1.0  # left half faces +x
    normals[2, :, w // 2:] = -1.0  # right half faces the camera
    normals[:, 0, 0] = 0.0  # one invalid pixel
    depth = (torch.arange(n, dtype=torch.float32).reshape(1, h, w) + 1.0)
    depth[0, -1, -1] = 0.0  # invalid
    return {
        "image": torch.arange(3 * n, dtype=torch.float32).reshape(3, h, w) / (3 * n),
        "semseg": torch.arange(n).reshape(h, w) % 5 - 1,  # labels {-1, 0, 1, 2, 3}
        "depth": depth,
        "normals": normals,
        "edge": (torch.arange(n).reshape(1, h, w) % 3 - 1).float(),  # {-1, 0, 1}
        "scene": torch.tensor(2),
        "boxes": torch.tensor([[0.0, 0.0, 1.0, 1.0], [3.0, 3.0, 4.0, 4.0]]),
        "box_labels": torch.tensor([7, 8]),
        "meta": {"index": 0},
    }


# ------------------------------------------------------------------------------------------------ flip
def test_flip_mirrors_maps_negates_normal_x_and_mirrors_boxes():
    s = make_sample(h=2, w=3)
    s["boxes"] = torch.tensor([[0.0, 0.0, 1.0, 2.0], [0.5, 0.25, 2.5, 1.0]])
    out = RandomHorizontalFlip(p=1.0)(s)
    for key in ("image", "semseg", "depth", "edge"):
        assert torch.equal(out[key], s[key].flip(-1)), key
    assert torch.equal(out["normals"][0], -s["normals"][0].flip(-1))
    assert torch.equal(out["normals"][1:], s["normals"][1:].flip(-1))
    assert (out["normals"][:, 0, 2] == 0).all()  # the invalid pixel moved to the mirrored place, still all-zero
    # x1' = W - x2, x2' = W - x1 with W = 3
    assert torch.equal(out["boxes"], torch.tensor([[2.0, 0.0, 3.0, 2.0], [0.5, 0.25, 2.5, 1.0]]))
    assert torch.equal(out["box_labels"], s["box_labels"]) and torch.equal(out["scene"], s["scene"])
    assert out["meta"]["hflip"] is True and "hflip" not in s["meta"]  # the input is not modified
    back = RandomHorizontalFlip(p=1.0)(out)
    for key in ("image", "semseg", "depth", "normals", "edge", "boxes"):
        assert torch.equal(back[key], s[key]), key


def test_flip_probability_and_determinism():
    s = make_sample()
    assert torch.equal(RandomHorizontalFlip(p=0.0)(s)["image"], s["image"])
    draws = [bool(RandomHorizontalFlip(0.5, torch.Generator().manual_seed(k))(s)["meta"].get("hflip"))
             for k in range(40)]
    assert 5 < sum(draws) < 35
    again = [bool(RandomHorizontalFlip(0.5, torch.Generator().manual_seed(k))(s)["meta"].get("hflip"))
             for k in range(40)]
    assert draws == again
    with pytest.raises(ValueError, match="p must be in"):
        RandomHorizontalFlip(p=1.5)


# ----------------------------------------------------------------------------------------- scale + crop
def test_scale_crop_at_scale_2_is_a_pixel_replication_then_crop():
    s = make_sample()
    for seed in range(6):
        out = RandomScaleCrop(size=4, scales=(2.0, 2.0), generator=torch.Generator().manual_seed(seed))(s)
        top, left, ch, cw = out["meta"]["crop"]
        assert (ch, cw) == (4, 4) and 0 <= top <= 4 and 0 <= left <= 4 and out["meta"]["scale"] == 2.0

        def up(x: torch.Tensor) -> torch.Tensor:  # nearest x2 by hand: every pixel becomes a 2x2 block
            return x.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., top: top + 4, left: left + 4]

        assert out["semseg"].dtype == torch.int64 and torch.equal(out["semseg"], up(s["semseg"]))
        assert torch.equal(out["edge"], up(s["edge"]))
        assert torch.equal(out["normals"], up(s["normals"]))
        assert torch.equal(out["depth"], up(s["depth"]) / 2)  # twice as big = twice as close
        assert out["image"].shape == (3, 4, 4) and 0 <= out["image"].min() and out["image"].max() <= 1
        assert torch.equal(out["scene"], s["scene"])


def test_scale_crop_keeps_label_sets_unit_normals_and_scales_depth():
    s = make_sample(h=8, w=8)
    for seed in range(10):
        out = RandomScaleCrop(size=(6, 7), scales=(1.0, 1.5), generator=torch.Generator().manual_seed(seed))(s)
        scale = out["meta"]["scale"]
        assert 1.0 <= scale <= 1.5
        assert out["semseg"].shape == (6, 7) and set(out["semseg"].unique().tolist()) <= {-1, 0, 1, 2, 3}
        assert set(out["edge"].unique().tolist()) <= {-1.0, 0.0, 1.0}
        norms = out["normals"].norm(dim=0)
        assert torch.all(((norms - 1).abs() < 1e-6) | (norms == 0))
        valid_in = set(s["depth"][s["depth"] > 0].tolist())
        d = out["depth"][out["depth"] > 0] * scale
        assert all(min(abs(v - u) for u in valid_in) < 1e-4 for v in d.tolist())
        assert (out["depth"] >= 0).all()  # invalid (0) stays invalid, never becomes negative


def test_scale_crop_boxes_shift_clip_and_drop_with_their_labels():
    s = make_sample()  # boxes [0,0,1,1] (label 7) and [3,3,4,4] (label 8) in a 4x4 image
    seen = {"first": 0, "second": 0, "none": 0}
    for seed in range(30):
        out = RandomScaleCrop(size=4, scales=(2.0, 2.0), generator=torch.Generator().manual_seed(seed))(s)
        top, left, _, _ = out["meta"]["crop"]
        expected, labels = [], []
        for box, label in (([0.0, 0.0, 2.0, 2.0], 7), ([6.0, 6.0, 8.0, 8.0], 8)):  # scaled x2
            x1, y1 = max(box[0] - left, 0.0), max(box[1] - top, 0.0)
            x2, y2 = min(box[2] - left, 4.0), min(box[3] - top, 4.0)
            if x2 > x1 and y2 > y1:
                expected.append([x1, y1, x2, y2])
                labels.append(label)
        assert torch.equal(out["boxes"], torch.tensor(expected).reshape(-1, 4))
        assert out["box_labels"].tolist() == labels
        seen["first" if labels == [7] else "second" if labels == [8] else "none"] += 1
    assert all(v > 0 for v in seen.values()), seen  # the cases above were all exercised


def test_scale_one_is_a_plain_crop_and_big_crops_pad_with_ignore():
    s = make_sample()
    out = RandomScaleCrop(size=(2, 3), scales=(1.0, 1.0), generator=torch.Generator().manual_seed(3))(s)
    top, left, _, _ = out["meta"]["crop"]
    assert torch.equal(out["image"], s["image"][:, top: top + 2, left: left + 3])
    assert torch.equal(out["depth"], s["depth"][..., top: top + 2, left: left + 3])
    big = RandomScaleCrop(size=(5, 6), scales=(1.0, 1.0))(s)
    assert big["meta"]["crop"][:2] == [0, 0]
    assert torch.equal(big["semseg"][:4, :4], s["semseg"])
    assert (big["semseg"][4:] == -1).all() and (big["semseg"][:, 4:] == -1).all()
    assert (big["edge"][..., 4:] == -1).all() and (big["depth"][..., 4:, :] == 0).all()
    assert (big["normals"][:, :, 4:] == 0).all() and (big["image"][:, 4:] == 0).all()


def test_geometric_transforms_refuse_unknown_keys():
    s = {**make_sample(), "instance": torch.zeros(4, 4)}
    with pytest.raises(ValueError, match="instance.*known keys: image"):
        RandomScaleCrop(size=4)(s)
    with pytest.raises(ValueError, match="scales must be"):
        RandomScaleCrop(size=4, scales=(1.5, 1.0))


# ---------------------------------------------------------------------------------------------- colour
def test_color_jitter_changes_only_the_image_and_is_seeded():
    s = make_sample()
    jitter = lambda seed: ColorJitter(0.4, 0.4, 0.4, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = jitter(0)(s), jitter(0)(s), jitter(1)(s)
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert 0 <= a["image"].min() and a["image"].max() <= 1
    for key in s:
        if key != "image":
            assert a[key] is s[key], key  # labels are passed through untouched


def test_color_jitter_brightness_factor_and_grey_invariance():
    s = make_sample()
    g = torch.Generator().manual_seed(5)
    factor = 0.7 + 0.6 * torch.rand((), generator=torch.Generator().manual_seed(5)).item()  # U[1-0.3, 1+0.3]
    out = ColorJitter(brightness=0.3, generator=g)(s)
    assert torch.allclose(out["image"], (s["image"] * factor).clamp(0, 1))
    grey = {"image": torch.full((3, 2, 2), 0.4)}
    assert torch.allclose(ColorJitter(saturation=0.9, generator=torch.Generator().manual_seed(0))(grey)["image"],
                          grey["image"])  # a grey image has no saturation to change
    # contrast blends towards the mean grey level, which therefore stays put (no clipping here)
    img = {"image": torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25}
    out = ColorJitter(contrast=0.2, generator=torch.Generator().manual_seed(1))(img)["image"]
    luma = lambda x: (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).mean()  # noqa: E731
    assert abs(luma(out) - luma(img["image"])) < 1e-6
    with pytest.raises(ValueError, match="brightness must be >= 0"):
        ColorJitter(brightness=-0.1)


def test_compose_applies_in_order():
    s = make_sample()
    out = Compose([RandomHorizontalFlip(p=1.0), RandomScaleCrop(size=4, scales=(1.0, 1.0))])(s)
    assert torch.equal(out["semseg"], s["semseg"].flip(-1))
    assert out["meta"]["hflip"] is True and out["meta"]["scale"] == 1.0
    assert "RandomHorizontalFlip" in repr(Compose([RandomHorizontalFlip()]))
