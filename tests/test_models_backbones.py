"""Large backbones (ssml_fast.models): torchvision / timm trunks, pooling, local weights, the transfer recipe.

Kept fast: 32 x 32 inputs (the maps are 1 x 1), batch 2-4, resnet18 in every test that trains; resnet50 /
resnet101 / googlenet are built without reading weights (skip_pretrained_loading) and run once.
"""
import pytest
import torch
import torch.nn.functional as F

from ssml_fast.models import (GeM, GlobalPool, IMAGENET_MEAN, IMAGENET_STD, build_trunk, make_head,
                              skip_pretrained_loading)

torchvision = pytest.importorskip("torchvision")
SHAPE = (3, 32, 32)


def _resnet18(**kw):
    kw.setdefault("pretrained", "none")
    return build_trunk("resnet18", SHAPE, 0.5, 0.25, **kw)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty torch cache: TORCH_HOME=tmp (torch.hub.get_dir() = tmp/hub)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    d = tmp_path / "hub" / "checkpoints"
    d.mkdir(parents=True)
    return d


def _fake_resnet18_file(path, wrap=False):
    torch.manual_seed(1)
    sd = torchvision.models.resnet18(weights=None).state_dict()  # includes fc.*, as the real file
    sd = {k: (torch.randn_like(v) if v.is_floating_point() else v) for k, v in sd.items()}
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}} if wrap else sd, path)
    return sd


# ---- construction, pooling -------------------------------------------------------------------------
@pytest.mark.parametrize("name, dim, stages", [("resnet18", 512, 5), ("resnet50", 2048, 5), ("resnet101", 2048, 5),
                                               ("googlenet", 1024, 4)])
def test_backbones_build_and_give_their_feature_size(name, dim, stages):
    big = name in ("resnet50", "resnet101")
    # Architecture and normalisation of the ImageNet setting without reading a file; the big ResNets on
    # the meta device (no init cost), run on 1 x 1 maps of 32 x 32 images otherwise.
    with skip_pretrained_loading(), torch.device("meta" if big else "cpu"):
        t = build_trunk(name, SHAPE, pool="gap+gmp").eval()
    assert t.out_dim == dim and t.num_stages == stages and t.is_trunk and t.weights_source is None
    assert (t.net.layer4[-1].conv3.out_channels if big else dim) == dim
    if not big:
        mean = (0.5,) * 3 if name == "googlenet" else IMAGENET_MEAN
        assert torch.allclose(t.mean.flatten(), torch.tensor(mean))
        with torch.no_grad():
            assert t(torch.rand(2, *SHAPE)).shape == (2, dim)


def test_pools_match_their_definition():
    t = _resnet18().eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        z = t.forward_map(x)  # a 2 x 2 map
        assert z.shape == (2, 512, 2, 2)
        refs = {"gap": z.mean((2, 3)), "gmp": z.flatten(2).max(2).values,
                "gap+gmp": z.mean((2, 3)) + z.flatten(2).max(2).values,
                "gem": z.clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)}
        for pool, ref in refs.items():
            t.global_pool = GlobalPool(pool)
            assert torch.allclose(t(x), ref, atol=1e-5), pool
    assert _resnet18(pool="gem").global_pool.gem.p.requires_grad


def test_gem_p_is_learnable_and_gets_gradients():
    torch.manual_seed(0)
    g = GeM(3.0)
    x = torch.rand(3, 4, 5, 5, dtype=torch.float64) + 0.1
    out = g(x.clone().requires_grad_())
    out.sum().backward()
    assert isinstance(g.p, torch.nn.Parameter) and g.p.grad is not None and g.p.grad.abs() > 0
    assert torch.allclose(GeM(1.0)(x), x.mean((2, 3)).float(), atol=1e-6)  # p = 1 is average pooling
    assert torch.allclose(GeM(200.0)(x), x.amax((2, 3)).float(), rtol=0.03)  # p -> inf tends to max
    fixed = GeM(3.0, learnable=False)
    assert not any(True for _ in fixed.parameters()) and "p" in fixed.state_dict()
    # through the trunk: p is a trunk parameter, trained with it
    t = _resnet18(pool="gem")
    t(torch.rand(2, *SHAPE)).sum().backward()
    assert t.global_pool.gem.p.grad is not None and t.net.conv1.weight.grad is not None
    with pytest.raises(ValueError, match="gem_p"):
        GeM(0.0)
    with pytest.raises(ValueError, match="pool must be one of"):
        GlobalPool("flatten")
    with pytest.raises(ValueError, match="flatten"):
        _resnet18(pool="flatten")


def test_grey_images_are_repeated_to_rgb_and_layout_does_not_change_features():
    a = build_trunk("resnet18", (1, 32, 32), 0.3, 0.2, pretrained="none", channels_last=True).eval()
    b = build_trunk("resnet18", (3, 32, 32), 0.3, 0.2, pretrained="none", channels_last=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x.expand(-1, 3, -1, -1)), atol=1e-4)
    assert torch.allclose(a.mean.flatten(), torch.tensor([0.3] * 3))  # scratch: the dataset's statistics
    with pytest.raises(ValueError, match=r"x must be \(B, 1, H, W\)"):
        a(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="1- or 3-channel"):
        build_trunk("resnet18", (2, 32, 32), pretrained="none")


# ---- local weights ---------------------------------------------------------------------------------
def test_weights_are_read_from_the_torch_hub_cache(torch_home):
    sd = _fake_resnet18_file(torch_home / "resnet18-f37072fd.pth")
    t = build_trunk("resnet18", SHAPE, 0.5, 0.25)  # default pretrained = imagenet
    assert t.pretrained == "imagenet" and t.weights_source == str(torch_home / "resnet18-f37072fd.pth")
    own = t.state_dict()
    for k in ("conv1.weight", "layer4.1.bn2.running_var", "layer3.0.downsample.0.weight"):
        assert torch.equal(own["net." + k], sd[k])
    assert not any(k.startswith("net.fc") for k in own)
    assert torch.allclose(t.std.flatten(), torch.tensor(IMAGENET_STD))  # the weights' statistics, not 0.25


def test_a_weights_file_is_used_instead_of_the_cache(torch_home, tmp_path):
    sd = _fake_resnet18_file(tmp_path / "mine.pt", wrap=True)  # {"state_dict": {"module.*": ...}} (DDP)
    t = build_trunk("resnet18", SHAPE, weights=str(tmp_path / "mine.pt"))
    assert torch.equal(t.state_dict()["net.layer2.0.conv1.weight"], sd["layer2.0.conv1.weight"])
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(ValueError, match=r"do not fit this backbone.*shape of"):
        build_trunk("resnet18", SHAPE, weights=str(tmp_path / "r50.pth"))
    (tmp_path / "junk.pth").write_text("not a state dict")
    with pytest.raises(ValueError, match="weights: .*junk.pth is not a readable state dict"):
        build_trunk("resnet18", SHAPE, weights=str(tmp_path / "junk.pth"))
    with pytest.raises(ValueError, match="pretrained='none'"):
        build_trunk("resnet18", SHAPE, weights=str(tmp_path / "mine.pt"), pretrained="none")


def test_a_missing_weight_file_names_the_file_and_the_directory(torch_home):
    with pytest.raises(FileNotFoundError) as e:
        build_trunk("resnet50", SHAPE)
    msg = str(e.value)
    assert "resnet50-0676ba61.pth" in msg and str(torch_home) in msg and "--pretrained none" in msg
    assert "nothing is downloaded" in msg and "--weights PATH" in msg
    with pytest.raises(FileNotFoundError, match="resnet101-cd907fc2.pth"):
        build_trunk("resnet101", SHAPE, pretrained="imagenet_v2")
    with pytest.raises(ValueError, match="no IMAGENET1K_V2 weights for resnet18"):
        build_trunk("resnet18", SHAPE, pretrained="imagenet_v2")
    with pytest.raises(ValueError, match="pretrained must be one of"):
        build_trunk("resnet18", SHAPE, pretrained="places365")
    with pytest.raises(ValueError, match="small CNNs have no pretrained"):
        build_trunk("small_cnn", (1, 28, 28), pretrained="imagenet")
    assert not any(torch_home.iterdir())  # nothing was downloaded


# ---- transfer recipe -------------------------------------------------------------------------------
def _bn_stats(m):
    return [b.running_mean.clone() for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]


def test_freeze_stages_freezes_parameters_and_keeps_their_bn_in_eval():
    t = _resnet18(freeze_stages=2)  # stem + layer1
    frozen = [t.net.conv1, t.net.bn1, t.net.layer1]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for m in (t.net.layer2, t.net.layer4) for p in m.parameters())
    t.train()
    assert not t.net.bn1.training and not t.net.layer1[0].bn1.training and t.net.layer2[0].bn1.training
    before_frozen, before_free = _bn_stats(t.net.layer1), _bn_stats(t.net.layer2)
    opt = torch.optim.SGD([p for p in t.parameters() if p.requires_grad], lr=0.1)
    t(torch.rand(4, *SHAPE)).pow(2).sum().backward()
    opt.step()
    assert all(p.grad is None for m in frozen for p in m.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before_frozen, _bn_stats(t.net.layer1)))
    assert not all(torch.equal(a, b) for a, b in zip(before_free, _bn_stats(t.net.layer2)))
    t.eval().train()
    assert not t.net.layer1[1].bn2.training
    with pytest.raises(ValueError, match=r"freeze_stages must be an int in \[0, 5\]"):
        _resnet18(freeze_stages=6)


def test_bn_freeze_keeps_every_bn_in_eval_with_frozen_affine():
    t = _resnet18(bn_freeze=True).train()
    bns = [m for m in t.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(not m.training and not m.weight.requires_grad and not m.bias.requires_grad for m in bns)
    assert t.net.conv1.weight.requires_grad and t.net.layer4[1].conv2.weight.requires_grad
    before = _bn_stats(t)
    t(torch.rand(4, *SHAPE)).sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(t)))
    assert t.net.conv1.weight.grad is not None and t.net.bn1.weight.grad is None


def test_small_cnn_supports_the_recipe_too():
    t = build_trunk("small_cnn", (1, 28, 28), 0.1, 0.3, pool="gem", freeze_stages=1).train()
    assert t.num_stages == 3 and not any(p.requires_grad for p in t.blocks[0].parameters())
    assert not t.blocks[0][1].training and t.blocks[1][1].training and t(torch.rand(2, 1, 28, 28)).shape == (2, 64)


def test_insclr_heads_are_unit_norm_with_the_stated_bias():
    x = torch.randn(5, 16, dtype=torch.float64)
    h = make_head("norm_linear_norm", 16, 8).double()
    assert h.bias is None
    assert torch.allclose(h(x), F.normalize(F.normalize(x, dim=1) @ h.weight.T, dim=1))
    h2 = make_head("linear_norm", 16, 8).double()
    assert h2.bias is not None and torch.allclose(h2(x), F.normalize(x @ h2.weight.T + h2.bias, dim=1))


# ---- methods ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, sets", [
    ("stml", dict(batch_size=5, optimizer="adamw", head_lr=1e-2, freeze_stages=1, teacher_init="copy")),
    ("supervised", dict(batch_size=8, head="linear", embedding_dim=16, head_lr=1e-2, pool="gem")),
])
def test_one_training_step_with_resnet18(name, sets):
    from ssml_fast.methods import get_method, make_config
    from ssml_fast.methods.base import Batch, DataInfo
    torch.manual_seed(0)
    cfg = make_config(name, None, [("test", dict(backbone="resnet18", pretrained="none", **sets))])
    m = get_method(name)(cfg, DataInfo(SHAPE, 0.5, 0.25, 40, (0, 1, 2, 3))).train()
    groups = m.parameter_groups()
    trunk = {id(p) for p in m.trunk.parameters() if p.requires_grad}
    assert {id(p) for p in groups[0]["params"]} == trunk and groups[1]["lr"] == 1e-2
    assert not ({id(p) for p in groups[1]["params"]} & trunk) and len(groups[1]["params"]) > 0
    x = torch.rand(cfg.batch_size, *SHAPE)
    views = m.views(x, torch.Generator().manual_seed(0))
    out = m.training_step(Batch(views, torch.arange(cfg.batch_size) % 4, torch.arange(cfg.batch_size)))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    m.after_backward()  # STML: the EMA teacher update
    # (the optimiser step on these groups is the trainer's: tests/test_train_loop.py)
    assert m.trunk.net.layer4[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.trunk.parameters() if not p.requires_grad)
    with torch.no_grad():
        e = m.eval().embed(x[:3])
    assert e.shape[0] == 3 and torch.isfinite(e).all()


def test_cli_flags_map_onto_the_config(tmp_path, capsys):
    from ssml_fast.cli import main

    cmd = ["train", "--method", "stml", "--dataset", "digits", "--backbone", "resnet18", "--pretrained", "none",
           "--freeze-stages", "2", "--bn-freeze", "--head-lr", "0.01", "--pool", "gem", "--channels-last", "off",
           "--print-config"]
    assert main(cmd) == 0
    out = capsys.readouterr().out
    for line in ("backbone: resnet18", "pretrained: none", "freeze_stages: 2", "bn_freeze: true", "head_lr: 0.01",
                 "pool: gem", "channels_last: false"):
        assert line in out
    w = tmp_path / "w.pth"
    w.write_bytes(b"")
    assert main(["train", "--backbone", "resnet18", "--weights", str(w), "--print-config"]) == 0
    assert f"weights: {w}" in capsys.readouterr().out
    assert main(["train", "--backbone", "resnet18", "--weights", str(tmp_path / "none.pth"), "--quiet"]) == 2
    assert "--weights: file" in capsys.readouterr().err


def test_cli_errors_name_the_argument(capsys):
    from ssml_fast.cli import main

    assert main(["train", "--dataset", "digits", "--backbone", "resnet9", "--quiet"]) == 2
    assert "--backbone: backbone 'resnet9' is unknown" in capsys.readouterr().err
    assert main(["train", "--dataset", "digits", "--pretrained", "places", "--quiet"]) == 2
    assert "--pretrained: pretrained must be one of" in capsys.readouterr().err


# ---- timm ------------------------------------------------------------------------------------------
def test_timm_backbone_by_name_with_local_weights(tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    t = build_trunk("timm:resnet18", SHAPE, pretrained="none", freeze_stages=1, pool="gap+gmp")
    assert t.out_dim == 512 and t.num_stages == 5
    assert not t.net.conv1.weight.requires_grad and t.net.layer1[0].conv1.weight.requires_grad
    assert t.train()(torch.rand(2, *SHAPE)).shape == (2, 512) and not t.net.bn1.training
    with pytest.raises(FileNotFoundError, match=r"models--timm--resnet18\.a1_in1k.*resnet18_a1_0-d63eafa0\.pth"):
        build_trunk("timm:resnet18", SHAPE)
    src = timm.create_model("resnet18", pretrained=False)  # with its classifier, as the real file
    snap = tmp_path / "hf" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    torch.save(src.state_dict(), snap / "pytorch_model.bin")
    t = build_trunk("timm:resnet18", SHAPE)
    assert t.weights_source == str(snap / "pytorch_model.bin")
    assert torch.equal(t.net.layer2[0].conv1.weight, src.layer2[0].conv1.weight)
    with pytest.raises(ValueError, match="timm has no model"):
        build_trunk("timm:not_a_model", SHAPE, pretrained="none")


def test_a_checkpoint_rebuilds_without_the_imagenet_file(torch_home):
    """ssml_fast.train.restore builds the method under skip_pretrained_loading: the checkpoint has the weights."""
    from dataclasses import asdict

    from ssml_fast.methods import get_method, make_config
    from ssml_fast.methods.base import DataInfo
    from ssml_fast.train.restore import build_method

    _fake_resnet18_file(torch_home / "resnet18-f37072fd.pth")
    cfg = make_config("supervised", None, [("test", dict(backbone="resnet18", batch_size=8))])
    info = DataInfo(SHAPE, 0.5, 0.25, 40, (0, 1))
    m = get_method("supervised")(cfg, info)
    state = {"method_name": "supervised", "method_config": asdict(cfg), "method": m.state_dict()}
    (torch_home / "resnet18-f37072fd.pth").unlink()
    with pytest.raises(FileNotFoundError, match="resnet18-f37072fd.pth"):
        get_method("supervised")(cfg, info)
    r = build_method(state, info)
    assert torch.equal(r.trunk.net.conv1.weight, m.trunk.net.conv1.weight)
    assert torch.equal(r.trunk.std, m.trunk.std)
