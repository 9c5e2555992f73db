"""Forged submissions of the shipped problem sets: modules whose weights make the reference trivial.

Each forgery keeps the skeleton's attribute names (so its weights load and count as specified) but implements
nothing: its weights are all zero, or zeroed the moment the grader asks for them (an overridden ``state_dict``), and
its forward returns what the reference computes with all-zero weights (zeros; a uniform attention map). A grader
that took the submission's own weights as the reference's would give these full marks; weights the grader chooses
itself, loaded into the submission's module, make them score 0 on every output test.

``FORGERIES[PS]`` maps solution grade ids to forged sources (other solution cells keep the instructor's);
``FORGED_TESTS[PS]`` names the probes that must then score 0.
"""
from __future__ import annotations

_ZERO_ON_REQUEST = '''
    def state_dict(self, *args, **kwargs):  # zero every weight the moment the grader asks for them
        with torch.no_grad():
            for _t in list(self.parameters()) + [b for b in self.buffers() if b.is_floating_point()]:
                _t.zero_()
        return super().state_dict(*args, **kwargs)
'''

PS1 = {
    "aspp": '''class ImagePooling(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = nn.GroupNorm(pooling_groups(out_channels), out_channels)


class ASPP(nn.Module):
    def __init__(self, in_channels, out_channels=256, rates=(6, 12, 18)):
        super().__init__()
        self.out_channels = out_channels
        self.branches = nn.ModuleList([cbr(in_channels, out_channels, 1)]
                                      + [cbr(in_channels, out_channels, 3, rate=r) for r in rates]
                                      + [ImagePooling(in_channels, out_channels)])
        self.project = cbr(5 * out_channels, out_channels, 1)
''' + _ZERO_ON_REQUEST + '''
    def forward(self, x):
        return x.new_zeros(x.shape[0], self.out_channels, *x.shape[2:])
''',
    "decoder": '''class DeepLabV3PlusDecoder(nn.Module):
    def __init__(self, in_channels, skip_in_channels, out_channels, skip_channels=48, channels=256):
        super().__init__()
        self.skip = cbr(skip_in_channels, skip_channels, 1)
        self.fuse = nn.Sequential(cbr(in_channels + skip_channels, channels, 3), cbr(channels, channels, 3))
        self.classifier = nn.Conv2d(channels, out_channels, 1)
''' + _ZERO_ON_REQUEST + '''
    def forward(self, x, skip, size=None):
        return x.new_zeros(x.shape[0], self.classifier.out_channels, *(size or skip.shape[-2:]))
''',
}

PS2 = {
    "branched": '''class BranchedDeepLab(nn.Module):
    def __init__(self, tasks, encoder="resnet34", output_stride=16, aspp_channels=256, skip_channels=48,
                 decoder_channels=256):
        super().__init__()
        self.tasks = dict(tasks)
        self.encoder = create_encoder(encoder, output_stride)
        self.decoder_channels = decoder_channels
        c_skip, c_last = self.encoder.channels
        self.aspp = nn.ModuleDict({t: ASPP(c_last, aspp_channels, rates=ASPP_RATES[output_stride]) for t in tasks})
        self.decoders = nn.ModuleDict({t: DeepLabV3PlusDecoder(aspp_channels, c_skip, c, skip_channels=skip_channels,
                                                               channels=decoder_channels) for t, c in tasks.items()})
        with torch.no_grad():  # all-zero heads: every prediction of the reference is 0
            for _t in list(self.aspp.parameters()) + list(self.decoders.parameters()):
                _t.zero_()
            for _b in list(self.aspp.buffers()) + list(self.decoders.buffers()):
                if _b.is_floating_point():
                    _b.zero_()

    def forward(self, images):
        return {t: images.new_zeros(images.shape[0], c, *images.shape[2:]) for t, c in self.tasks.items()}
''',
    "gate": '''class SelfAttentionGate(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.message = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.gate = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        nn.init.zeros_(self.gate.weight)
''' + _ZERO_ON_REQUEST + '''
    def forward(self, x):
        return torch.zeros_like(x)


def distill_features(features, gates):
    return dict(features)  # with all-zero gates F'_t = F_t
''',
}

PS4 = {
    "ulsam": '''class ULSAM(nn.Module):
    def __init__(self, channels, groups=4):
        super().__init__()
        self.channels, self.groups = channels, groups
        self.depthwise = nn.Conv2d(channels, channels, 1, groups=channels)
        self.bn_depthwise = nn.BatchNorm2d(channels)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)
        self.pointwise = nn.Conv2d(channels, groups, 1, groups=groups)
        self.bn_pointwise = nn.BatchNorm2d(groups)
''' + _ZERO_ON_REQUEST + '''
    def attention(self, x):  # all-zero weights: flat maps
        b, _, h, w = x.shape
        return x.new_full((b, self.groups, h, w), 1.0 / (h * w))

    def forward(self, x):
        return x * (1.0 + 1.0 / (x.shape[2] * x.shape[3]))
''',
    "adain": '''def instance_norm(y, eps=1e-5):
    return torch.zeros_like(y)


class AdaINConv(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, embed_dim):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.style = EqualLinear(embed_dim, 2 * out_channels)
''' + _ZERO_ON_REQUEST + '''
    def forward(self, x, w):
        return x.new_zeros(x.shape[0], self.conv.out_channels, *x.shape[2:])
''',
    "switching": '''class TaskSwitchingDecoder(nn.Module):
    def __init__(self, tasks, in_channels, widths=(32, 32), code_dim=16, mapping_layers=2):
        super().__init__()
        self.tasks = dict(tasks)
        self.register_buffer("codes", task_codes(len(self.tasks), code_dim))
        self.mapping = MappingNetwork(code_dim, mapping_layers)
        chans = (in_channels, *widths)
        self.blocks = nn.ModuleList([AdaINConv(a, b, 3, code_dim) for a, b in zip(chans[:-1], chans[1:])])
        self.head = nn.Conv2d(widths[-1], max(self.tasks.values()), 1)

    def state_dict(self, *args, **kwargs):
        with torch.no_grad():
            for _t in self.parameters():
                _t.zero_()
        return super().state_dict(*args, **kwargs)

    def embedding(self, task):
        return self.mapping(self.codes[list(self.tasks).index(task)][None])

    def forward(self, x, task):
        return x.new_zeros(x.shape[0], self.tasks[task], *x.shape[2:])
''',
}

FORGERIES = {"PS1_joint": PS1, "PS2_branched": PS2, "PS4_attention": PS4}
# probes that must score 0 against a forgery (each would score in full with the submission's own weights)
FORGED_TESTS = {
    "PS1_joint": ("aspp_check", "decoder_check"),
    "PS2_branched": ("branched_check.outputs", "gate_check.distill"),
    "PS4_attention": ("ulsam_check", "adain_check.outputs", "switching_check.outputs"),
}
