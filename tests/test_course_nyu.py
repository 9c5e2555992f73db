"""Notebook 07's presets, augmentation, models and references (mtlkit.course.nyu); unit preset only, no big models."""
import pytest
import torch

from mtlkit import course
from mtlkit.course.nyu import (AUGMENT_SCALES, LIBMTL_NYUV2_REFERENCE, MTAN_NYUV2_REFERENCE, NYU_SCHEDULES,
                               NYU_TASK_CHANNELS, nyu_augmentation, nyu_model, nyu_model_spec, nyu_references,
                               nyu_schedule, nyu_splits, nyu_tasks, nyu_trainer_kwargs,
                               run_options)
from mtlkit.data import RandomHorizontalFlip, RandomScaleCrop, collate

ALL = ["equal", "dwa", "uncertainty"]


def test_paper_preset_is_the_mtan_nyuv2_recipe():
    paper = nyu_schedule("paper")
    assert paper["data"] == "nyuv2" and paper["augment"] is True and paper["backbone"] == "segnet"
    assert nyu_trainer_kwargs(paper) == dict(epochs=200, batch_size=2, optimizer="adam", lr=1e-4, weight_decay=0.0,
                                             scheduler="step", drop_last=False, step_size=100, gamma=0.5)
    assert paper["width_mult"] == 1.0
    # the full table of the MTAN paper, every model under the three weightings, plus the faithful cross-stitch row
    assert paper["grid"] == {m: ALL for m in ("stan", "split-wide", "split-deep", "dense", "cross-stitch",
                                              "cross-stitch-channelwise", "mtan")}
    # MTAN's Cross-Stitch row: one shared mixture per stage, init 1, from scratch, one learning rate (their code)
    assert (paper["cross_stitch"], paper["cross_stitch_init"], paper["units_lr_mult"]) == ("shared", "scratch", 1.0)
    assert nyu_model_spec("cross-stitch", paper) == ("segnet-cross-stitch", {"width_mult": 1.0, "mode": "shared"})
    # Misra et al.'s form as its own labelled row: channel-wise units from the single-task SegNets, faster units
    assert nyu_model_spec("cross-stitch-channelwise", paper) == ("segnet-cross-stitch",
                                                                 {"mode": "channelwise", "width_mult": 1.0})
    assert paper["channelwise_init"] == "single-task" and paper["channelwise_units_lr_mult"] > 1
    # compared with MTAN's table: depth and normals metrics averaged per test batch, as MTAN's code does
    assert paper["task_options"] == {"depth": {"depth_mode": "per_batch"}, "normals": {"normals_mode": "per_batch"}}
    assert nyu_schedule("smoke")["task_options"] == {}


def test_task_options_reach_the_meters():
    info = {"semseg": {"num_classes": 13}, "depth": {}, "normals": {}}
    tasks = nyu_tasks(info, nyu_schedule("paper"))
    assert tasks["normals"].meter().mode == "per_batch" and tasks["depth"].meter().mode == "per_batch"
    assert nyu_tasks(info, nyu_schedule("smoke"))["normals"].meter().mode == "pixel"
    with pytest.raises(ValueError, match="task_options name tasks \\['edge'\\]"):
        nyu_tasks(info, nyu_schedule("smoke", task_options={"edge": {"tolerance": 1}}))


@pytest.mark.parametrize("row, init_key, lr_key", [("cross-stitch-channelwise", "channelwise_init",
                                                     "channelwise_units_lr_mult"),
                                                    ("cross-stitch", "cross_stitch_init", "units_lr_mult")])
def test_run_options_start_cross_stitch_from_the_single_task_networks(row, init_key, lr_key):
    schedule = nyu_schedule("unit", **{init_key: "single-task", lr_key: 10.0})
    singles = {f"single-{t}": nyu_model("single", {t: c}, schedule) for t, c in NYU_TASK_CHANNELS.items()}
    name, options = run_options(row, schedule, trained=singles)
    assert name == "segnet-cross-stitch" and options["train"] == {"param_groups": [("cross_stitch", 10.0)]}
    model = nyu_model(row, NYU_TASK_CHANNELS, schedule)
    options["init"](model)
    for t in NYU_TASK_CHANNELS:  # each branch and head now holds its single-task network's weights
        want = singles[f"single-{t}"].state_dict()
        heads = {f"heads.{t}.{k}": v for k, v in model.heads[t].state_dict().items()}
        got = {**model.branches[t].state_dict(), **heads}
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(ValueError, match="needs the trained single-task networks"):
        run_options(row, schedule, trained={})
    scratch = run_options(row, nyu_schedule("unit", **{init_key: "scratch", lr_key: 1.0}))[1]
    assert "init" not in scratch and "train" not in scratch


def test_paper_resnet50_is_libmtls_recipe():
    paper = nyu_schedule("paper", "resnet50")
    assert paper["data"] == "nyuv2" and paper["augment"] is True
    assert nyu_trainer_kwargs(paper) == dict(epochs=200, batch_size=8, optimizer="adam", lr=1e-4, weight_decay=1e-5,
                                             scheduler="step", drop_last=True, step_size=100, gamma=0.5)
    # torchvision's ImageNet weights and LibMTL's final upsampling (align_corners=True), as LibMTL's code
    assert nyu_model_spec("mtan", paper) == ("resnet-mtan", dict(encoder="resnet50.tv_in1k", output_stride=8,
                                                                   pretrained=True, aspp_channels=256,
                                                                   aspp_pooling_norm="batch", align_corners=True))
    assert paper["task_options"] == {}  # LibMTL's metrics are the kit's default (pooled normals)
    assert nyu_schedule("smoke", "resnet50")["aspp_pooling_norm"] == "group"  # CPU presets: a 1-image last batch
    assert nyu_model_spec("shared", paper)[0] == nyu_model_spec("single", paper)[0] == "resnet-shared"
    assert set(paper["grid"]) == {"shared", "mtan"} and all("equal" in w for w in paper["grid"].values())


def test_smoke_schedule_is_the_reduced_grid_in_budget():
    smoke = nyu_schedule("smoke")
    assert (smoke["data"], smoke["data_preset"]) == ("synthetic-nyu", "smoke")
    assert smoke["train_images"] == 64 and smoke["val_images"] == 32 and smoke["augment"] is False
    assert nyu_trainer_kwargs(smoke) == dict(epochs=3, batch_size=8, optimizer="adam", lr=1e-3, weight_decay=0.0,
                                             scheduler=None, drop_last=False)  # DWA moves from epoch 3 on
    assert smoke["width_mult"] == 0.125
    assert smoke["grid"] == {"mtan": ALL, "split": ["equal"]}


def test_schedule_is_a_copy_and_refuses_unknown_keys():
    smoke = nyu_schedule("smoke", epochs=5)
    assert smoke["epochs"] == 5 and NYU_SCHEDULES["smoke"]["segnet"]["epochs"] == 3
    smoke["grid"]["mtan"].append("gradnorm")
    assert NYU_SCHEDULES["smoke"]["segnet"]["grid"]["mtan"] == ALL
    with pytest.raises(ValueError, match=r"unknown keys \['epoch'\].*valid keys"):
        nyu_schedule("smoke", epoch=3)
    with pytest.raises(ValueError, match=r"unknown keys \['width_mult'\]"):  # a SegNet option, not a ResNet one
        nyu_schedule("smoke", "resnet50", width_mult=0.5)
    with pytest.raises(ValueError, match="valid presets"):
        nyu_schedule("fast")
    with pytest.raises(ValueError, match="valid backbones"):
        nyu_schedule("smoke", "vgg")
    with pytest.raises(ValueError, match=r"unknown rows \['shared'\]"):
        nyu_schedule("smoke", grid={"shared": ["equal"]})
    with pytest.raises(ValueError, match=r"weightings \['uniform'\]"):
        nyu_schedule("smoke", grid={"mtan": ["uniform"]})
    with pytest.raises(ValueError, match="unknown row 'dense' for the resnet50 backbone"):
        nyu_model_spec("dense", nyu_schedule("unit", "resnet50"))


def test_references_are_reference_tables_in_the_kits_units():
    assert MTAN_NYUV2_REFERENCE["mtan-equal"] == {"parameters_M": 44.23, "semseg/miou": 40.89,
                                                  "semseg/pixel_acc": 66.14, "depth/abs_err": 0.5524,
                                                  "depth/rel_err": 0.2347, "normals/mean": 27.27}
    assert MTAN_NYUV2_REFERENCE["mtan-dwa"]["depth/abs_err"] == 0.5358
    assert MTAN_NYUV2_REFERENCE["mtan-uncertainty"]["normals/mean"] == 26.47
    assert LIBMTL_NYUV2_REFERENCE == {
        "shared-equal": {"semseg/miou": 54.10, "semseg/pixel_acc": 75.78, "depth/abs_err": 0.3771,
                         "depth/rel_err": 0.1596, "normals/mean": 23.53},
        "mtan-equal": {"semseg/miou": 54.38, "semseg/pixel_acc": 75.84, "depth/abs_err": 0.3764,
                       "depth/rel_err": 0.1561, "normals/mean": 22.98}}
    refs = course.reference_table()  # the course-wide table picks them up, labelled by their source
    mine = refs[refs["source"] == "mtlkit.course.nyu.LIBMTL_NYUV2_REFERENCE"]
    assert len(mine) == 10 and set(mine["model"]) == {"shared-equal", "mtan-equal"}
    assert (refs["source"] == "mtlkit.course.nyu.MTAN_NYUV2_REFERENCE").sum() == 18
    both = nyu_references(columns=["semseg/miou", "normals/mean"])
    assert list(both.columns) == ["semseg/miou", "normals/mean"] and len(both) == 5
    assert all(s.startswith("paper (reference): ") for s in both.index.get_level_values("source"))


def test_augmentation_is_the_mtan_scale_crop_and_flip():
    aug = nyu_augmentation((32, 48))
    scale_crop, flip = aug.transforms
    assert isinstance(scale_crop, RandomScaleCrop) and scale_crop.size == (32, 48)
    assert scale_crop.scales == AUGMENT_SCALES == (1.0, 1.5)
    assert isinstance(flip, RandomHorizontalFlip) and flip.p == 0.5
    sample = {"image": torch.rand(3, 32, 48), "semseg": torch.randint(0, 13, (32, 48)),
              "depth": torch.full((1, 32, 48), 3.0), "normals": torch.nn.functional.normalize(
                  torch.randn(3, 32, 48), dim=0)}
    torch.manual_seed(1)
    out = [aug(sample) for _ in range(8)]
    assert all(o["image"].shape == (3, 32, 48) and o["semseg"].shape == (32, 48) for o in out)
    # depth is divided by the scale: a scene 1.0-1.5x closer
    assert all(1.9 <= float(o["depth"].max()) <= 3.0 for o in out) and any(float(o["depth"].max()) < 3.0 for o in out)


def test_unit_splits_subset_and_augment_only_training(tmp_path):
    schedule = nyu_schedule("unit", train_images=6, val_images=3, augment=True)
    splits = nyu_splits(schedule)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (6, 3, 4)
    assert splits["train"].task_info.keys() == NYU_TASK_CHANNELS.keys()
    assert splits["train"].dataset.transform is not None
    assert splits["val"].dataset.transform is None and splits["test"].transform is None
    batch = collate([splits["train"][i] for i in range(2)])  # augmented samples still batch
    assert batch["image"].shape == (2, 3, 32, 32) and batch["depth"].shape == (2, 1, 32, 32)
    assert nyu_splits(nyu_schedule("unit"))["train"].transform is None


def test_unit_segnet_rows_and_faithful_cross_stitch_start():
    schedule = nyu_schedule("unit")
    x = torch.rand(2, 3, 32, 32)
    singles = {t: nyu_model("single", {t: c}, schedule).eval() for t, c in NYU_TASK_CHANNELS.items()}
    model = nyu_model("cross-stitch-channelwise", NYU_TASK_CHANNELS, schedule).eval()
    assert model.mode == "channelwise"
    assert model.widths[0] == 8  # width_mult 0.125
    model.load_single_task_branches(singles)
    # with every unit set to identity, each branch is exactly its single-task network
    with torch.no_grad():
        for unit in model.cross_stitch:
            unit.weight.copy_(torch.eye(3)[:, :, None].expand_as(unit.weight))
        out = model(x)
        for t, single in singles.items():
            torch.testing.assert_close(out[t], single(x)[t])
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert "cross_stitch" in names  # the prefix the notebook's param_groups rule uses
    shared = nyu_model("cross-stitch", NYU_TASK_CHANNELS, schedule)  # MTAN's row: one shared mixture, init 1
    assert shared.mode == "shared" and shared.cross_stitch[0].weight.tolist() == [1.0, 1.0, 1.0]
    faithful = nyu_model("cross-stitch", NYU_TASK_CHANNELS, nyu_schedule("unit", cross_stitch="channelwise"))
    assert faithful.cross_stitch[0].weight.shape == (3, 3, 8)


def test_unit_resnet_path_trains(tmp_path):
    """The resnet50 backbone's rows in the unit preset (ResNet-18, narrow heads): build, train one epoch, masks."""
    setup = course.nyu.setup("unit", "resnet50", device="cpu", out_dir=tmp_path, train_images=4)
    assert len(setup.splits["train"]) == 4
    name, options = course.nyu.run_options("mtan", setup.schedule)
    result = course.run(setup, "resnet50-mtan-equal", name, weighting="equal", progress=False, **options)
    model, metrics = result.model, result.metrics
    assert type(model).__name__ == "ResNetMTAN" and model.encoder.output_stride == 8
    assert metrics["finished"] and set(metrics["test"]) == set(NYU_TASK_CHANNELS)
    assert metrics["config"]["built"]["options"]["encoder"] == "resnet18"
    _, masks = model.eval().forward_with_masks(torch.rand(1, 3, 32, 32))
    assert set(masks) == set(NYU_TASK_CHANNELS) and len(masks["semseg"]) == 4
    single = nyu_model("single", {"depth": 1}, setup.schedule)
    assert type(single).__name__ == "ResNetShared" and single.tasks == ("depth",)
