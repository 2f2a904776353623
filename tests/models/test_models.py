"""Models: shapes at several input sizes, exact parameter counts, attention maths, gradients, registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnmel.errors import AttnMelError
from attnmel.models import MODEL_NAMES, ClassifierOutput, build_model
from attnmel.models.attention import GridAttention
from attnmel.models.vgg import AttnMelCNN, MelCNN

SIZES = [(64, 64), (96, 96), (128, 128), (64, 96)]
VGG_FAMILY = ["attnmel", "mel_cnn", "vgg16_gap", "vgg16"]
FEATURE_DIMS = {"attnmel": 1280, "mel_cnn": 1280, "vgg16_gap": 512, "vgg16": 4096, "resnet50": 2048,
                "densenet121": 1024}
PARAM_COUNTS = {"attnmel": 15_184_964, "mel_cnn": 14_725_698, "vgg16_gap": 14_724_162, "vgg16": 134_277_186}

_CACHE: dict[str, torch.nn.Module] = {}


def full_model(name: str) -> torch.nn.Module:
    """Each full-width K=2 model is built once per session (VGG-16 alone has 134M parameters)."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = build_model({"name": name, "pretrained": "none"}, 2).eval()
    return _CACHE[name]


@pytest.mark.parametrize("name", list(PARAM_COUNTS))
def test_exact_parameter_counts(name: str) -> None:
    model = full_model(name)
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]


def small_model(name: str) -> torch.nn.Module:
    """VGG-family models at width 0.25 (same code paths, 16x fewer FLOPs); the others at full size."""
    key = f"small-{name}"
    if key not in _CACHE:
        torch.manual_seed(0)
        width = 0.25 if name in VGG_FAMILY else 1.0
        _CACHE[key] = build_model({"name": name, "pretrained": "none", "width": width}, 2).eval()
    return _CACHE[key]


@pytest.mark.parametrize("name", list(FEATURE_DIMS))
def test_output_shapes_at_several_sizes(name: str) -> None:
    model = small_model(name)
    dim = FEATURE_DIMS[name] // 4 if name in VGG_FAMILY else FEATURE_DIMS[name]  # width 0.25
    for h, w in SIZES:
        with torch.no_grad():
            out = model(torch.randn(2, 3, h, w))
        assert isinstance(out, ClassifierOutput)
        assert out.logits.shape == (2, 2)
        assert out.features.shape == (2, dim)
        assert torch.isfinite(out.logits).all()
        if name == "attnmel":
            assert model.attention_layers == ("pool3", "pool4")
            assert out.maps["pool3"].shape == (2, 1, h // 8, w // 8)
            assert out.maps["pool4"].shape == (2, 1, h // 16, w // 16)
        else:
            assert out.maps == {} and model.attention_layers == ()


@pytest.mark.parametrize("name", VGG_FAMILY)
def test_full_width_forward(name: str) -> None:
    model = full_model(name)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 96))
    assert out.logits.shape == (2, 2) and out.features.shape == (2, FEATURE_DIMS[name])
    if name == "attnmel":
        assert {k: tuple(v.shape) for k, v in out.maps.items()} == {"pool3": (2, 1, 8, 12), "pool4": (2, 1, 4, 6)}


@pytest.mark.parametrize("name", list(FEATURE_DIMS))
def test_gradcam_layer_is_a_submodule_and_works_with_captum(name: str) -> None:
    from captum.attr import LayerGradCam

    model = small_model(name)
    layer = model.gradcam_layer
    assert any(layer is m for m in model.modules())
    cam = LayerGradCam(lambda x: model(x).logits, layer)
    attr = cam.attribute(torch.randn(2, 3, 64, 64), target=1)
    assert attr.shape[0] == 2 and attr.shape[1] == 1 and torch.isfinite(attr).all()


@pytest.mark.parametrize("k", [3, 7])
def test_other_class_counts(k: int) -> None:
    for name in VGG_FAMILY:
        model = build_model({"name": name, "pretrained": "none", "width": 0.125}, k)
        out = model(torch.randn(2, 3, 64, 96))
        assert out.logits.shape == (2, k)


def test_width_multiplier_shrinks_the_backbone() -> None:
    model = build_model({"name": "attnmel", "pretrained": "none", "width": 0.25}, 2)
    assert sum(p.numel() for p in model.parameters()) < 1_500_000
    out = model(torch.randn(2, 3, 96, 64))
    assert out.features.shape == (2, 128 + 64 + 128)
    assert out.maps["pool3"].shape == (2, 1, 12, 8)


def test_input_not_multiple_of_32_is_an_error() -> None:
    model = build_model({"name": "attnmel", "pretrained": "none", "width": 0.125}, 2)
    with pytest.raises(AttnMelError, match="multiple of 32"):
        model(torch.randn(1, 3, 80, 64))


def _naive_attention(block: GridAttention, l: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's equations written out literally."""
    lp = F.conv2d(l, block.W_l.weight)
    gp = F.interpolate(F.conv2d(g, block.W_g.weight), size=l.shape[-2:], mode="bilinear", align_corners=False)
    c = F.conv2d(F.relu(lp + gp), block.phi.weight, block.phi.bias)
    if block.normalisation == "sigmoid":
        a = torch.sigmoid(c)
        return a, (a * l).mean(dim=(2, 3))
    b, _, h, w = c.shape
    a = torch.softmax(c.view(b, -1), dim=1).view(b, 1, h, w)
    return a, (a * l).sum(dim=(2, 3))


@pytest.mark.parametrize("normalisation", ["sigmoid", "softmax"])
def test_grid_attention_matches_the_spec_equations(normalisation: str) -> None:
    torch.manual_seed(0)
    block = GridAttention(16, 32, 8, normalisation)
    with torch.no_grad():
        block.phi.bias.fill_(0.3)
    l, g = torch.randn(2, 16, 8, 12), torch.randn(2, 32, 2, 3)
    a, v = block(l, g)
    a_ref, v_ref = _naive_attention(block, l, g)
    assert a.shape == (2, 1, 8, 12) and v.shape == (2, 16)
    torch.testing.assert_close(a, a_ref)
    torch.testing.assert_close(v, v_ref)
    if normalisation == "sigmoid":
        assert (a > 0).all() and (a < 1).all()
    else:
        torch.testing.assert_close(a.sum(dim=(1, 2, 3)), torch.ones(2))


def test_softmax_attnmel_maps_sum_to_one_and_sigmoid_maps_in_unit_interval() -> None:
    x = torch.randn(2, 3, 64, 96)
    soft = build_model({"name": "attnmel", "pretrained": "none", "attention": "softmax", "width": 0.25}, 2)
    sig = build_model({"name": "attnmel", "pretrained": "none", "attention": "sigmoid", "width": 0.25}, 2)
    for a in soft(x).maps.values():
        torch.testing.assert_close(a.sum(dim=(1, 2, 3)), torch.ones(2))
    for a in sig(x).maps.values():
        assert ((a > 0) & (a < 1)).all()


def test_gradients_reach_every_attention_layer() -> None:
    torch.manual_seed(0)
    model = build_model({"name": "attnmel", "pretrained": "none", "width": 0.25}, 2)
    out = model(torch.randn(2, 3, 64, 64))
    loss = F.cross_entropy(out.logits, torch.tensor([0, 1])) + sum(a.mean() for a in out.maps.values())
    loss.backward()
    for layer in ("pool3", "pool4"):
        for part in ("W_l", "W_g", "phi"):
            grad = getattr(model.attention[layer], part).weight.grad
            assert grad is not None and grad.abs().sum() > 0, f"{layer}.{part}"


def test_switched_off_attention_uses_gap_and_keeps_the_head() -> None:
    one = build_model({"name": "attnmel", "pretrained": "none", "width": 0.25, "attention_layers": ["pool4"]}, 2)
    assert one.attention_layers == ("pool4",)
    assert "pool3" not in one.attention and one.classifier.in_features == 320
    out = one(torch.randn(2, 3, 64, 64))
    assert set(out.maps) == {"pool4"}

    # No attention at all is exactly Mel-CNN: same keys, same outputs.
    torch.manual_seed(0)
    bare = AttnMelCNN(2, attention_layers=[], width=0.25).eval()
    mel = MelCNN(2, width=0.25).eval()
    mel.load_state_dict(bare.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bare(x).logits, mel(x).logits)


def test_bad_attention_settings_are_errors() -> None:
    with pytest.raises(AttnMelError, match="pool5"):
        build_model({"name": "attnmel", "pretrained": "none", "width": 0.125, "attention_layers": ["pool5"]}, 2)
    with pytest.raises(AttnMelError, match="sigmoid"):
        build_model({"name": "attnmel", "pretrained": "none", "width": 0.125, "attention": "tanh"}, 2)
    with pytest.raises(AttnMelError, match="width"):
        build_model({"name": "attnmel", "pretrained": "none", "width": 0}, 2)


def test_class_activation_map_averages_to_the_logits() -> None:
    model = build_model({"name": "vgg16_gap", "pretrained": "none", "width": 0.25}, 3).eval()
    with torch.no_grad():
        model.classifier.bias.copy_(torch.randn_like(model.classifier.bias))
        x = torch.randn(2, 3, 64, 96)
        cam = model.class_activation_map(x)
        out = model(x)
    assert cam.shape == (2, 3, 2, 3)
    torch.testing.assert_close(cam.mean(dim=(2, 3)) + model.classifier.bias, out.logits)


def test_new_layer_init_follows_the_spec() -> None:
    torch.manual_seed(0)
    model = AttnMelCNN(2)
    w = model.classifier.weight
    assert model.classifier.bias.abs().sum() == 0 and abs(w.std().item() - 0.01) < 0.001
    w_l = model.attention["pool4"].W_l.weight  # fan_in 512: std sqrt(2/512)
    assert abs(w_l.std().item() - (2 / 512) ** 0.5) < 0.005
    assert model.attention["pool3"].phi.bias.abs().sum() == 0


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(AttnMelError) as e:
        build_model({"name": "vgg19", "pretrained": "none"}, 2)
    for name in MODEL_NAMES:
        assert name in str(e.value)


def test_bad_num_classes_is_an_error() -> None:
    with pytest.raises(AttnMelError, match="num_classes"):
        build_model({"name": "attnmel", "pretrained": "none", "width": 0.125}, 1)


def test_segmenters_build_through_build_model() -> None:
    # num_classes does not apply to a segmenter: one lesion-logit channel at the input's size.
    model = build_model({"name": "unet", "pretrained": "none", "width": 0.125}, 2).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 1, 32, 32)
    with pytest.raises(AttnMelError, match="model.options.*fuse_strides"):
        build_model({"name": "unet", "pretrained": "none", "options": {"fuse_strides": [8]}}, 2)


def test_factories_take_typed_keyword_arguments_and_check_each_once():
    """As torchvision's and timm's builders: ``factory(num_classes, *, key=value)``; build_model only reads the
    config section into those arguments."""
    import inspect

    from attnmel.models import MODELS

    for name in MODEL_NAMES:
        params = list(inspect.signature(MODELS.get(name)).parameters.values())
        assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
                   for p in params[1:]), name
    from attnmel.models import attnmel, resnet50

    net = attnmel(3, width=0.125, attention_layers=["pool4"])
    assert net.attention_layers == ("pool4",) and net(torch.zeros(1, 3, 64, 64)).logits.shape == (1, 3)
    with pytest.raises(AttnMelError, match="model.width is only supported by the VGG-16 family"):
        resnet50(2, width=0.5)
    # A key of another model in the section is left alone (the whole model section is passed).
    assert build_model({"name": "vgg16", "pretrained": "none", "width": 0.125, "gap_path": "gated",
                        "options": {}}, 2) is not None
