"""The paper networks (DDPM++/NCSN++, ADM, DiT): parameter counts equal the released models'
exactly (counted on the meta device: nothing is allocated), tiny configs keep x's shape with
every option, labels follow EDM's convention (zero row = unconditional), and a tiny DiT trains.

Official counts (issue #15, measured with the official implementations): DDPM++ CIFAR-10
55,732,739 / 55,733,891 (augment_dim 9) / 55,735,299 (10 classes + augment); NCSN++ with
augmentation 56,397,827; ADM ImageNet-64 conditional 295,899,267; DiT-XL/2 675,129,632
(DiT's training log for the released config: 1000 classes + null, learn_sigma, 32x32x4)."""

from __future__ import annotations

import pytest
import torch

from benchmark.errors import ConfigError
from benchmark.nets import build_net, count_params
from benchmark.nets.dhariwal import DhariwalUNet
from benchmark.nets.songunet import SongUNet

CIFAR = (3, 32, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("cfg,classes,expected", [
    ({"type": "ddpmpp"}, 0, 55_732_739),
    ({"type": "ddpmpp", "augment_dim": 9}, 0, 55_733_891),
    ({"type": "ddpmpp", "augment_dim": 9}, 10, 55_735_299),
    ({"type": "ncsnpp", "augment_dim": 9}, 0, 56_397_827),
    ({"type": "songunet", "embedding_type": "fourier", "channel_mult_noise": 2, "encoder_type": "residual",
      "resample_filter": [1, 3, 3, 1], "augment_dim": 9}, 0, 56_397_827),
])
def test_songunet_parameter_counts_equal_the_released_cifar10_models(cfg, classes, expected):
    assert count_params(cfg, CIFAR, 1, classes) == expected


def test_adm_parameter_count_equals_the_released_imagenet64_model():
    cfg = {"type": "adm", "model_channels": 192, "channel_mult": [1, 2, 3, 4], "num_blocks": 3,
           "attn_resolutions": [32, 16, 8]}
    assert count_params(cfg, (3, 64, 64), 1, 1000) == 295_899_267
    assert count_params({**cfg, "label_dim": 1000}, (3, 64, 64)) == 295_899_267  # classes from the net config


def test_dit_xl2_parameter_count_equals_the_paper_675m():
    cfg = {"type": "dit", "size": "XL", "patch": 2, "learn_sigma": True}
    assert count_params(cfg, (4, 32, 32), 1, 1000) == 675_129_632
    # without the variance head only the final Linear shrinks (by half of its patch*patch*8 outputs)
    hidden, patch = 1152, 2
    assert count_params({**cfg, "learn_sigma": False}, (4, 32, 32), 1, 1000) == \
        675_129_632 - (hidden + 1) * patch * patch * 4


def test_second_time_input_gets_imms_two_layer_mapping_and_keeps_the_released_layout_otherwise():
    one, two = count_params({"type": "ddpmpp"}, CIFAR, 1), count_params({"type": "ddpmpp"}, CIFAR, 2)
    assert two - one == (128 * 512 + 512) + (512 * 512 + 512)  # IMM's map_layer0_s, map_layer1_s
    dit1 = count_params({"type": "dit", "size": "S"}, (4, 32, 32), 1)
    dit2 = count_params({"type": "dit", "size": "S"}, (4, 32, 32), 2)
    assert dit2 - dit1 == (256 * 384 + 384) + (384 * 384 + 384)  # a second timestep embedder


TINY_SONG = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0)


def test_the_second_time_input_enters_after_map_layer1_as_imm_adds_emb_s():
    """IMM's SongUNet: emb = map_layer1(silu(map_layer0(f(t)))) + map_layer1_s(silu(map_layer0_s(f(s)))), then
    SiLU. With the s branch's last layer a constant v, the embedding must be silu(branch_t + v) exactly."""
    torch.manual_seed(0)
    net = build_net({"type": "ddpmpp", **TINY_SONG}, (3, 16, 16), num_cond=2)
    v = torch.linspace(-2, 2, net.map_layer1.out_features)
    with torch.no_grad():
        net.map_cond1_layer1.weight.zero_()
        net.map_cond1_layer1.bias.copy_(v)
    t, s = torch.tensor([0.3, -1.2]), torch.tensor([0.1, 0.7])
    f = net.map_noise(t)
    f = f.reshape(2, 2, -1).flip(1).reshape(f.shape)
    branch_t = net.map_layer1(torch.nn.functional.silu(net.map_layer0(f)))
    got = net.embed(torch.stack([t, s], 1), None, None)
    assert torch.allclose(got, torch.nn.functional.silu(branch_t + v), atol=1e-6)
    assert torch.equal(got, net.embed(torch.stack([t, s + 1], 1), None, None))  # s enters only through its branch


@pytest.mark.parametrize("encoder_type", ["standard", "skip", "residual"])
@pytest.mark.parametrize("decoder_type", ["standard", "skip"])
@pytest.mark.parametrize("embedding_type,filt", [("positional", [1, 1]), ("fourier", [1, 3, 3, 1])])
def test_songunet_every_option_keeps_the_shape_and_depends_on_time(encoder_type, decoder_type, embedding_type, filt):
    torch.manual_seed(0)
    net = SongUNet(16, 3, 3, encoder_type=encoder_type, decoder_type=decoder_type, embedding_type=embedding_type,
                   resample_filter=filt, augment_dim=9, **TINY_SONG)
    for p in net.parameters():  # the released init makes the output ~1e-5; randomise to see dependence
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 3, 16, 16)
    y0, y1 = net(x, torch.zeros(2)), net(x, torch.ones(2))
    assert y0.shape == x.shape and torch.isfinite(y0).all()
    assert not torch.allclose(y0, y1)
    assert not torch.allclose(y0, net(x, torch.zeros(2), augment_labels=torch.ones(2, 9)))


@pytest.mark.parametrize("kind", ["ddpmpp", "adm", "dit", "unet"])
def test_zero_label_row_equals_no_labels_and_a_class_changes_the_output(kind):
    torch.manual_seed(0)
    cfg = {"ddpmpp": {"type": "ddpmpp", **TINY_SONG},
           "adm": {"type": "adm", "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
                   "attn_resolutions": [8], "dropout": 0.0},
           "dit": {"type": "dit", "size": "S", "depth": 2, "hidden": 32, "num_heads": 2, "patch": 4},
           "unet": {"type": "unet", "model_channels": 8, "channel_mult": [1, 2]}}[kind]
    net = build_net(cfg, (3, 16, 16), 1, num_classes=5).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x, c = torch.randn(2, 3, 16, 16), torch.randn(2)
    uncond = net(x, c)
    assert torch.equal(uncond, net(x, c, torch.zeros(2, 5)))
    assert not torch.allclose(uncond, net(x, c, torch.eye(5)[[1, 3]]))
    with pytest.raises(ConfigError, match="labels have shape"):
        net(x, c, torch.zeros(2, 4))


@pytest.mark.parametrize("cfg", [{"type": "ddpmpp", **TINY_SONG, "attn_resolutions": [8, 4]},
                                 {"type": "ncsnpp", **TINY_SONG, "attn_resolutions": [8, 4]},
                                 {"type": "adm", "model_channels": 64, "channel_mult": [1, 2], "num_blocks": 1,
                                  "attn_resolutions": [8, 4], "dropout": 0.0},
                                 {"type": "dit", "size": "S", "depth": 2, "hidden": 32, "num_heads": 2, "patch": 4},
                                 {"type": "unet", "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1}])
def test_every_gradient_has_its_parameters_layout(cfg):
    """DDP's gradient layout contract: with gradient_as_bucket_view the buckets are the gradients only if each
    gradient has its parameter's strides; a channels-last gradient (an attention output's transposed view fed
    to a 1x1 conv did that, and the layout then spread to the blocks after it) is copied every step and warns
    'Grad strides do not match bucket view strides'."""
    from conftest import torch_threads

    net = build_net(cfg, (3, 8, 8), 1, 0)
    with torch_threads(2):  # CPU conv backward keeps the input's layout at this batch and thread count (measured)
        net(torch.randn(32, 3, 8, 8), torch.ones(32)).square().mean().backward()
    bad = {n: (tuple(p.stride()), tuple(p.grad.stride())) for n, p in net.named_parameters()
           if p.grad is not None and p.grad.stride() != p.stride()}
    assert not bad, bad


@pytest.mark.parametrize("cfg", [{"type": "ddpmpp", **TINY_SONG}, {"type": "mlp"},
                                 {"type": "dit", "size": "S", "depth": 1, "hidden": 32, "num_heads": 2}])
def test_a_net_without_classes_refuses_labels(cfg):
    shape = (4,) if cfg["type"] == "mlp" else (3, 16, 16)
    net = build_net(cfg, shape)
    with pytest.raises(ConfigError, match="built without classes"):
        net(torch.randn(2, *shape), torch.randn(2), torch.eye(3)[:2])


def test_dit_maps_the_zero_row_to_the_null_class_and_one_hot_to_its_row():
    net = build_net({"type": "dit", "size": "S", "depth": 1, "hidden": 32, "num_heads": 2}, (4, 8, 8), 1, 3)
    table = net.y_embedder.embedding_table.weight
    labels = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert torch.equal(net.y_embedder(labels), table[[3, 1]])


def test_adm_second_time_input_changes_the_output():
    torch.manual_seed(0)
    net = DhariwalUNet(8, 3, 3, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4],
                       num_cond=2)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 3, 8, 8)
    assert not torch.allclose(net(x, torch.tensor([[0.0, 0.0], [1.0, 0.0]])),
                              net(x, torch.tensor([[0.0, 1.0], [1.0, 1.0]])))


def test_bad_net_options_are_one_line_config_errors():
    with pytest.raises(ConfigError, match="encoder_type"):
        build_net({"type": "songunet", "encoder_type": "fancy"}, CIFAR)
    with pytest.raises(ConfigError, match="unexpected keyword"):
        build_net({"type": "adm", "chanels": 3}, (3, 64, 64))
    with pytest.raises(ConfigError, match="DiT size"):
        build_net({"type": "dit", "size": "XXL"}, (4, 32, 32))
    with pytest.raises(ConfigError, match="label_dim is 10"):
        build_net({"type": "ddpmpp", "label_dim": 10}, CIFAR, num_classes=1000)
    with pytest.raises(ConfigError, match="unknown net type"):
        build_net({"type": "resnet"}, CIFAR)


def test_tiny_dit_trains_a_few_steps_with_edm_and_the_loss_falls():
    from benchmark.train_step import fit
    from methods.edm import EDM

    torch.manual_seed(0)
    data = torch.randn(64, 4, 8, 8) * 0.1 + torch.linspace(-0.5, 0.5, 8)[None, None, None]  # column ramps
    net = build_net({"type": "dit", "size": "S", "depth": 2, "hidden": 64, "num_heads": 4, "patch": 2},
                    (4, 8, 8), 1)
    method = EDM(total_steps=30, data_shape=(4, 8, 8))
    gen = torch.Generator().manual_seed(0)
    before = method.loss(net, data[:32], 0, gen).mean().item()
    net, ema = fit(method, net, data, steps=30, batch=32, lr=1e-3, seed=0)
    after = method.loss(net, data[:32], 0, torch.Generator().manual_seed(0)).mean().item()
    assert after < 0.7 * before
    assert net.blocks[0].adaLN_modulation[-1].weight.abs().sum() > 0  # adaLN-Zero layers left zero
    assert torch.equal(net.pos_embed, ema.pos_embed)  # the frozen position embedding stays fixed


def test_paper_net_runs_on_cpu_through_build_net_with_two_time_inputs():
    net = build_net({"type": "ncsnpp", **TINY_SONG}, (3, 16, 16), num_cond=2, num_classes=4)
    y = net(torch.randn(3, 3, 16, 16), torch.randn(3, 2), torch.eye(4)[:3])
    assert y.shape == (3, 3, 16, 16)


@pytest.mark.parametrize("suite,run,params", [("cifar10", "cifar10/edm-ddpmpp", "55,733,891"),
                                              ("imagenet64", "imagenet64/edm-adm", "295,899,267")])
def test_nets_command_prints_the_paper_parameter_counts_of_the_suites(capsys, suite, run, params):
    from benchmark.cli import main

    assert main(["nets", "--suite", suite]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[run][-1] == params
    assert rows[run][1] == run.split("-")[-1]  # the net type: ddpmpp / adm


def test_mlp_labels_follow_the_same_convention():
    torch.manual_seed(0)
    net = build_net({"type": "mlp", "hidden": 16, "depth": 1}, (2,), 1, num_classes=3)
    x, c = torch.randn(4, 2), torch.randn(4)
    assert torch.equal(net(x, c), net(x, c, torch.zeros(4, 3)))
    assert not torch.allclose(net(x, c), net(x, c, torch.eye(3)[[0, 1, 2, 0]]))
