"""DeepLabV3+ ablation switches (notebook 03): ``aspp=False`` (1x1 projection instead of ASPP) and ``skip=False``
(no stride-4 skip): output contract, what each switch removes (parameter deltas by hand) and what it changes
in the computation (locality without ASPP, independence from the skip without it)."""
import pytest
import torch

from mtlkit.models import build, count_parameters
from mtlkit.models.blocks import ASPP, DeepLabV3PlusDecoder

TASKS = {"semseg": 5, "depth": 1}
SMALL = dict(encoder="resnet18", aspp_channels=16, skip_channels=8, decoder_channels=16)
MEMBERS = ("deeplab-joint", "deeplab-branched", "deeplab-distill")
SWITCHES = [dict(aspp=False), dict(skip=False), dict(aspp=False, skip=False)]


def _shape_tree(out):
    return {k: _shape_tree(v) if isinstance(v, dict) else tuple(v.shape) for k, v in out.items()}


@pytest.mark.parametrize("options", SWITCHES, ids=lambda o: "-".join(f"{k}{int(v)}" for k, v in o.items()))
@pytest.mark.parametrize("name", MEMBERS + ("deeplab-single",))
def test_output_contract_with_each_switch(name, options):
    tasks = {"depth": 1} if name == "deeplab-single" else TASKS
    torch.manual_seed(0)
    model = build(name, tasks, **SMALL, **options).train()
    out = model(torch.rand(1, 3, 64, 96))  # batch size 1 in train mode, non-square
    expected = {t: (1, c, 64, 96) for t, c in tasks.items()}
    if name == "deeplab-distill":
        expected["aux"] = {"initial": dict(expected)}
    assert _shape_tree(out) == expected
    assert model.tasks == tuple(tasks)
    asp = model.aspp if name in ("deeplab-joint", "deeplab-single") else model.aspp["depth"]
    assert isinstance(asp, ASPP) == options.get("aspp", True)
    decoders = [model.decoder] if hasattr(model, "decoder") else list(model.decoders.values())
    assert all((d.skip is None) == (not options.get("skip", True)) for d in decoders)


def test_defaults_keep_aspp_and_skip():
    model = build("deeplab-joint", TASKS, **SMALL)
    assert isinstance(model.aspp, ASPP) and model.decoder.skip is not None
    assert model.use_aspp and model.use_skip


# Full size (ResNet-34, 256-wide ASPP/decoder, 48-channel skip): no forward pass, counts only.
C_ENC, C_SKIP_IN, C, C_SKIP = 512, 64, 256, 48
ASPP_PARAMS = C_ENC * C * (1 + 3 * 9 + 1) + 5 * C * C + 6 * 2 * C  # 4 conv branches + pooling + projection + norms
PROJECTION_PARAMS = C_ENC * C + 2 * C  # the 1x1 conv-BN-ReLU that replaces it
SKIP_PARAMS = C_SKIP_IN * C_SKIP + 2 * C_SKIP + 9 * C_SKIP * C * 1  # skip projection (+BN) + fuse conv's skip input


def test_hand_counts():
    assert ASPP_PARAMS == 4_131_840 and PROJECTION_PARAMS == 131_584
    assert SKIP_PARAMS == 3_072 + 96 + 110_592 == 113_760


@pytest.fixture(scope="module")
def full_counts():
    counts = {}
    for name in MEMBERS:
        for aspp in (True, False):
            for skip in (True, False):
                model = build(name, {"semseg": 19, "depth": 1}, encoder="resnet34", aspp=aspp, skip=skip)
                counts[name, aspp, skip] = count_parameters(model)
    return counts


@pytest.mark.parametrize("name", MEMBERS)
def test_parameter_deltas_by_hand(full_counts, name):
    n_aspp = 1 if name == "deeplab-joint" else 2  # one ASPP and one decoder per task when branched
    full = full_counts[name, True, True]
    no_aspp, no_skip, neither = (full_counts[name, a, s] for a, s in ((False, True), (True, False), (False, False)))
    assert full["total"] - no_aspp["total"] == n_aspp * (ASPP_PARAMS - PROJECTION_PARAMS)
    assert full["total"] - no_skip["total"] == n_aspp * SKIP_PARAMS
    assert full["total"] - neither["total"] == n_aspp * (ASPP_PARAMS - PROJECTION_PARAMS + SKIP_PARAMS)
    # each switch touches only its component: the encoder (and distillation's gates/final decoders) are unchanged
    for counts in (no_aspp, no_skip, neither):
        assert counts["encoder"] == full["encoder"] == 21_284_672
        for key in full:
            if key.startswith(("distill", "final")):
                assert counts[key] == full[key]
    if name == "deeplab-joint":
        assert full["aspp"] - no_aspp["aspp"] == ASPP_PARAMS - PROJECTION_PARAMS and no_aspp["aspp"] == 131_584
        assert full["decoder"] - no_skip["decoder"] == SKIP_PARAMS and no_skip["aspp"] == full["aspp"]


def test_without_aspp_the_context_is_local():
    # a 1x1 projection sees one position: perturbing one feature vector changes the output only there, while the
    # ASPP's atrous branches and image pooling spread it over the whole map
    torch.manual_seed(0)
    feats = torch.randn(2, 512, 6, 10)  # ResNet-18's last features
    poked = feats.clone()
    poked[:, :, 3, 4] += 5.0
    only_there = torch.zeros(6, 10, dtype=torch.bool)
    only_there[3, 4] = True
    for aspp in (False, True):
        head = build("deeplab-joint", TASKS, **SMALL, aspp=aspp).aspp.eval()
        with torch.no_grad():
            changed = (head(poked) - head(feats)).abs().amax(dim=(0, 1)) > 1e-6  # [6, 10]
        assert changed[3, 4]
        assert torch.equal(changed, only_there) == (not aspp)
        assert changed.all() == aspp  # image pooling reaches every position


def test_without_skip_the_decoder_ignores_the_skip_features():
    torch.manual_seed(0)
    x, skip = torch.randn(2, 16, 4, 6), torch.randn(2, 64, 16, 24)
    for use_skip in (True, False):
        decoder = DeepLabV3PlusDecoder(16, 64, 3, skip_channels=8, channels=16, use_skip=use_skip).eval()
        with torch.no_grad():
            a, b = decoder(x, skip), decoder(x, torch.randn_like(skip))
        assert a.shape == (2, 3, 16, 24)  # still predicts at 1/4 (the skip's size)
        assert torch.equal(a, b) == (not use_skip)


@pytest.mark.parametrize("option", ["aspp", "skip"])
def test_switches_must_be_booleans(option):
    with pytest.raises(ValueError, match=f"{option} must be True or False"):
        build("deeplab-joint", TASKS, **SMALL, **{option: "off"})
