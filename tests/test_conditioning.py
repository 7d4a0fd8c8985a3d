"""Class conditioning and classifier-free guidance (issue 15): labels reach every network a loss
calls, guidance is applied once to the raw output, guided steps are counted and charged, samples
are class-balanced, and the exact class-conditional GMM denoiser checks the sampler end to end."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TINY_GMM_SUITE

from benchmark.compute import PassCounter, forwards_per_step, sample_flops_per_image
from benchmark.data.gmm import GMM, ExactDenoiserNet
from benchmark.diffusion import Conditioned, edm_denoise, guided_forward
from benchmark.errors import ConfigError
from benchmark.labels import ClassLabels, drop_labels, one_hot
from benchmark.nets import build_net
from benchmark.nets.mlp import MLP
from benchmark.sample import balanced_labels
from benchmark.train_step import fit
from methods.base import build_method
from methods.consistency import consistency_eval
from methods.ect import ect_precond

pytestmark = pytest.mark.usefixtures("one_thread")

K = 4  # classes of the toy tests
# every method with small settings and a step budget it can sample
METHODS = {
    "edm": ({}, 3), "cd": ({}, 2), "ct": ({}, 2), "ict": ({}, 2), "mcm-cd": ({"segments": 2, "T_d": 8}, 2),
    "mcm-ct": ({"segments": 2, "T_d": 8}, 2), "ect": ({}, 2), "pd": ({"student_steps": 2}, 2), "imm": ({}, 2),
}


def make(name: str, dim: int = 2):
    params, steps = METHODS[name]
    m = build_method(name, params, total_steps=10, data_shape=(dim,))
    torch.manual_seed(0)
    net = MLP(dim, hidden=16, depth=1, num_cond=m.num_cond, num_classes=K).double().eval()
    return m, net, steps


def labels_of(classes) -> torch.Tensor:
    return one_hot(torch.as_tensor(classes), K).double()


# --- guidance is one formula on the raw output, equal to guiding every preconditioned output ----

def preconditioned_outputs(net, x):
    """D or f of every method's parameterisation at a few noise levels, for a raw net `net`."""
    sig = torch.full((len(x),), 1.3, dtype=x.dtype)
    t = torch.full((len(x),), 0.6, dtype=x.dtype)
    pd, _, _ = make("pd")
    mcm, _, _ = make("mcm-cd")
    imm, _, _ = make("imm")
    out = [edm_denoise(net, x, sig), consistency_eval(net, x, sig, 0.002),
           ect_precond(net, x, sig, boundary=True), mcm.f(net, x, t)]
    out += [pd.predict_x(net, x, torch.full_like(t, 0.7), kind) for kind in ("edm", "v", "x")]
    return out


def test_guiding_the_raw_output_guides_every_preconditioned_output():
    """D_s = D_u + s (D_c - D_u) for EDM, CM, ECT, MCM and PD's three parameterisations (affine in F)."""
    _, net, _ = make("edm")
    x, y, s = torch.randn(6, 2, dtype=torch.float64), labels_of([0, 1, 2, 3, 0, 1]), 2.5
    cond = preconditioned_outputs(Conditioned(net, y, 1.0), x)
    unc = preconditioned_outputs(Conditioned(net, y, 0.0), x)
    guided = preconditioned_outputs(Conditioned(net, y, s), x)
    for g, c, u in zip(guided, cond, unc):
        torch.testing.assert_close(g, u + s * (c - u))
    imm, net2, _ = make("imm")
    t, r = torch.full((6,), 0.7, dtype=torch.float64), torch.full((6,), 0.3, dtype=torch.float64)
    c, u, g = (imm.f(Conditioned(net2, y, w), x, t, r) for w in (1.0, 0.0, s))
    torch.testing.assert_close(g, u + s * (c - u))  # IMM's f_{s,t}: two time inputs


def test_guided_forward_is_one_batched_call_matching_two_separate_calls():
    _, net, _ = make("edm")
    x, c, y = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, dtype=torch.float64), labels_of([3, 2, 1, 0, 3])
    counter = PassCounter(net)
    out = guided_forward(net, x, c, y, 3.0)
    assert counter.calls == 1 and counter.nograd_examples + counter.grad_examples == 10
    f_c, f_u = net(x, c, labels=y), net(x, c, labels=torch.zeros_like(y))
    torch.testing.assert_close(out, f_u + 3.0 * (f_c - f_u))
    torch.testing.assert_close(guided_forward(net, x, c, y, 0.0), net(x, c))  # zero row == no labels


# --- every sampler: guidance 0 is the unconditional sampler; guided NFE and FLOPs -----------------

@pytest.mark.parametrize("name", sorted(METHODS))
def test_guidance_zero_equals_unconditional_sampling(name):
    m, net, steps = make(name)
    noise, y = torch.randn(8, 2, dtype=torch.float64), labels_of(torch.arange(8) % K)
    torch.manual_seed(1)
    guided0 = m.sample(net, noise, steps, labels=y, guidance=0.0)
    torch.manual_seed(1)
    uncond = m.sample(net, noise, steps)
    torch.manual_seed(1)
    cond = m.sample(net, noise, steps, labels=y)
    torch.testing.assert_close(guided0, uncond, rtol=0, atol=0)
    assert not torch.allclose(cond, uncond)  # the labels do reach the net


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_guided_step_costs_two_forwards_in_one_call(name):
    m, net, steps = make(name)
    noise, y = torch.randn(6, 2, dtype=torch.float64), labels_of(torch.arange(6) % K)
    for s, forwards in ((1.0, 1), (0.0, 1), (2.0, 2)):
        counter = PassCounter(net)
        m.sample(net, noise, steps, labels=y, guidance=s)
        counter.remove()
        assert forwards_per_step(s, conditional=True) == forwards
        assert counter.calls == m.nfe(steps)  # sequential network calls: nfe(steps) is unchanged
        assert counter.nograd_examples == len(noise) * m.nfe(steps) * forwards
    assert forwards_per_step(2.0, conditional=False) == 1
    assert sample_flops_per_image(100.0, m.nfe(steps), 2) == 2 * sample_flops_per_image(100.0, m.nfe(steps))


def test_guidance_without_labels_is_an_error_not_silently_ignored():
    m, net, steps = make("edm")
    with pytest.raises(ConfigError, match="needs class labels"):
        m.sample(net, torch.randn(4, 2, dtype=torch.float64), steps, guidance=2.0)


# --- exact class-conditional GMM: s = 1 samples the class, s = 0 the mixture --------------------

def test_exact_conditional_gmm_denoiser_sampled_at_guidance_one_gives_the_class_moments():
    gmm = GMM.make(dim=2, components=K, radius=0.7, std=0.1, seed=0)
    m = build_method("edm", {}, total_steps=1, data_shape=(2,))
    n, g = 4000, torch.Generator().manual_seed(0)
    noise = torch.randn(n, 2, generator=g, dtype=torch.float64)
    net = ExactDenoiserNet(gmm)
    for k in range(K):
        x = m.sample(net, noise, 32, labels=labels_of(torch.full((n,), k)))
        se = 0.1 / np.sqrt(n)
        assert (x.mean(0) - gmm.means[k]).abs().max() < 5 * se
        assert (x.std(0) - 0.1).abs().max() < 0.1 * 0.05  # 5% of the class std
    x = m.sample(net, noise, 32, labels=labels_of(torch.arange(n) % K), guidance=0.0)
    assert (x.mean(0) - gmm.mean()).abs().max() < 0.03  # the unconditional mixture
    torch.testing.assert_close(torch.cov(x.T), gmm.cov(), atol=0.01, rtol=0.05)


def test_cfg_with_the_exact_denoiser_makes_samples_more_class_typical():
    """s > 1 extrapolates away from the unconditional model: on overlapping classes the mixture's
    posterior of each sample's own class rises above that of exact (s = 1) samples, and s = 1
    matches the exact value E_k E_{x ~ class k} p(k | x)."""
    gmm = GMM.make(dim=2, components=K, radius=0.3, std=0.2, seed=0)
    m = build_method("edm", {}, total_steps=1, data_shape=(2,))
    n = 2000
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cls = torch.arange(n) % K

    def own_class_posterior(x):
        return float(gmm.posterior(x, torch.zeros(())).gather(1, cls[:, None]).mean())

    exact = own_class_posterior(gmm.means[cls] + 0.2 * noise)
    p = {s: own_class_posterior(m.sample(ExactDenoiserNet(gmm), noise, 24, labels=labels_of(cls), guidance=s))
         for s in (1.0, 3.0)}
    assert abs(p[1.0] - exact) < 0.02
    assert p[3.0] > p[1.0] + 0.05


def test_conditional_denoiser_error_is_zero_for_the_exact_conditional_denoiser():
    from benchmark.diffusion import with_labels
    from benchmark.metrics.exact import denoiser_mse

    gmm = GMM.make(dim=2, components=K, radius=0.7, std=0.1, seed=0)
    m = build_method("edm", {}, total_steps=1, data_shape=(2,))
    net, sig = ExactDenoiserNet(gmm), (0.1, 0.5, 2.0)
    cond = denoiser_mse(lambda x, s, y: m.denoiser(with_labels(net, y))(x, s), gmm, sig, 500,
                        torch.Generator().manual_seed(0), conditional=True)
    assert max(cond.values()) < 1e-10
    uncond_net = denoiser_mse(lambda x, s, y: m.denoiser(net)(x, s), gmm, sig, 500,
                              torch.Generator().manual_seed(0), conditional=True)
    assert uncond_net[0.5] > 0.01 and uncond_net[2.0] > 0.1  # ignoring the label is wrong at high noise


# --- training: labels reach student, target and teacher; label dropout ---------------------------

class RecordingMLP(MLP):
    calls: list = []  # class-level: shared by deep copies (the CM target network)

    def forward(self, x, c, labels=None):
        RecordingMLP.calls.append((id(self), labels))
        return super().forward(x, c, labels)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_network_a_loss_calls_sees_the_batch_labels(name):
    m, _, _ = make(name)
    torch.manual_seed(0)
    net = RecordingMLP(2, hidden=8, depth=1, num_cond=m.num_cond, num_classes=K).double().train()
    teacher = copy.deepcopy(net).eval() if m.teacher is not None else None
    m.setup(net, teacher)
    x0, y = torch.randn(8, 2, dtype=torch.float64), labels_of(torch.arange(8) % K)
    RecordingMLP.calls = []
    m.loss(net, x0, 3, torch.Generator().manual_seed(0), labels=y).mean().backward()
    assert RecordingMLP.calls
    for _, lab in RecordingMLP.calls:
        assert lab is not None and torch.equal(lab, y)
    expected = {id(net)} | ({id(teacher)} if name in ("cd", "mcm-cd", "pd") else set())
    target = getattr(m, "target", None)  # the CM target network theta^- (PD's `target` is a function)
    expected |= {id(target)} if isinstance(target, torch.nn.Module) else set()
    assert {i for i, _ in RecordingMLP.calls} == expected  # student, target, teacher


def test_label_dropout_zeroes_whole_rows_with_its_probability():
    y = labels_of(torch.arange(4000) % K).float()
    assert torch.equal(drop_labels(y, 0.0, torch.Generator()), y)
    d = drop_labels(y, 0.25, torch.Generator().manual_seed(0))
    zero = d.sum(1) == 0
    assert torch.equal(d[~zero], y[~zero])
    assert abs(zero.float().mean().item() - 0.25) < 0.03
    assert torch.equal(d, drop_labels(y, 0.25, torch.Generator().manual_seed(0)))


def test_labels_outside_the_classes_are_a_dataset_error():
    from benchmark.errors import DatasetError

    with pytest.raises(DatasetError, match="outside 0..3"):
        one_hot(torch.tensor([0, 4]), 4)
    with pytest.raises(DatasetError, match="outside 0..3"):
        ClassLabels(torch.tensor([-1, 2]), 4)


def test_class_labels_batch_is_one_hot_of_the_drawn_examples():
    lab = ClassLabels(torch.tensor([3, 0, 2, 1, 3]), K)
    y = lab.batch(torch.tensor([4, 1, 1]), torch.Generator(), torch.device("cpu"))
    assert torch.equal(y, one_hot(torch.tensor([3, 0, 0]), K))


@pytest.mark.slow
def test_conditional_edm_with_label_dropout_learns_both_conditional_and_unconditional():
    gmm = GMM.make(dim=2, components=K, radius=0.7, std=0.1, seed=0)
    x, k = gmm.sample_labeled(4000, torch.Generator().manual_seed(0))
    m = build_method("edm", {}, total_steps=600, data_shape=(2,))
    torch.manual_seed(0)
    net = build_net({"type": "mlp", "hidden": 64, "depth": 2}, (2,), 1, num_classes=K)
    _, ema = fit(m, net, x.float(), steps=600, batch=128, lr=2e-3, ema_halflife_images=4000,
                 labels=ClassLabels(k, K, dropout=0.2))
    noise = torch.randn(1000, 2, generator=torch.Generator().manual_seed(3))
    for c in range(K):
        s = m.sample(ema, noise, 12, labels=one_hot(torch.full((1000,), c), K))
        assert (s.mean(0).double() - gmm.means[c]).norm() < 0.1
    s = m.sample(ema, noise, 12)
    assert (s.mean(0).double() - gmm.mean()).norm() < 0.15


# --- sampling: class-balanced labels, kept in the shard -------------------------------------------

def test_balanced_labels_give_each_class_n_over_k_in_a_seeded_order():
    a = balanced_labels(0, 1000, 10)
    assert torch.bincount(a).tolist() == [100] * 10
    assert torch.equal(a, balanced_labels(0, 1000, 10)) and not torch.equal(a, balanced_labels(1, 1000, 10))
    assert torch.bincount(balanced_labels(0, 103, 10)).tolist() == [11] * 3 + [10] * 7


# --- config ---------------------------------------------------------------------------------------

def suite(**exp_extra):
    raw = copy.deepcopy(TINY_GMM_SUITE)
    raw["experiments"][0].update(exp_extra)
    return raw


def test_run_exposes_conditioning_guidance_and_classes():
    from benchmark.config import expand_suite
    from benchmark.validation import validate_schema

    raw = suite(conditioning="class", guidance=2.0, label_dropout=0.1)
    validate_schema(raw)
    r = expand_suite(raw).runs["gmm/edm-tiny-s0"]
    assert (r.conditioning, r.guidance, r.label_dropout, r.num_classes) == ("class", 2.0, 0.1, 4)
    plain = expand_suite(suite()).runs["gmm/edm-tiny-s0"]
    assert (plain.conditioning, plain.guidance, plain.num_classes) == ("uncond", 1.0, 0)
    assert r.config_hash != plain.config_hash


@pytest.mark.parametrize("extra, match", [
    ({"guidance": 2.0}, "guidance = 2 needs class conditioning"),
    ({"label_dropout": 0.1}, "label_dropout = 0.1 needs class conditioning"),
])
def test_guidance_without_class_conditioning_is_a_config_error(extra, match):
    from benchmark.config import expand_suite

    with pytest.raises(ConfigError, match=match):
        expand_suite(suite(**extra))


def test_class_conditioning_on_an_unlabelled_dataset_is_a_one_line_error():
    from benchmark.config import expand_suite

    raw = suite(conditioning="class", net={"type": "unet"})
    raw["datasets"]["gmm"] = {"kind": "lsun256", "path": "x"}
    with pytest.raises(ConfigError, match="has no class labels") as e:
        expand_suite(raw)
    assert "\n" not in str(e.value)


def test_student_and_teacher_must_share_conditioning():
    from benchmark.config import expand_suite

    raw = suite(conditioning="class")
    raw["experiments"].append({"method": "cd", "dataset": "gmm", "variant": "tiny", "train": {
        "images": 64, "batch": 32, "lr": 1e-3}, "steps": [1], "net": {"type": "mlp", "hidden": 16, "depth": 2}})
    with pytest.raises(ConfigError, match="same `conditioning:`"):
        expand_suite(raw)


# --- files: prepare -> train -> sample with labels and guidance ---------------------------------

def test_class_conditional_runs_train_and_sample_class_balanced_guided_shards(tmp_path):
    """A class-conditional EDM teacher and a CD student trained from the prepared GMM's labels; the
    guided shard keeps its balanced labels, and its FLOPs per image are twice the unguided ones."""
    import json

    from benchmark.config import expand_suite, run_dir
    from benchmark.prepare import prepare_dataset
    from benchmark.sample import sample_run
    from benchmark.train import train_run

    raw = suite(conditioning="class", label_dropout=0.2)
    raw["experiments"][0]["train"].update(images=256, ckpt_every_images=0)
    raw["experiments"].append({"method": "cd", "dataset": "gmm", "variant": "tiny", "conditioning": "class",
                               "guidance": 2.0, "net": {"type": "mlp", "hidden": 16, "depth": 2},
                               "train": {"images": 128, "batch": 32, "lr": 1e-3}, "steps": [1, 2]})
    data = tmp_path / "data"
    man = prepare_dataset("gmm", raw["datasets"]["gmm"], data / "manifest.json")
    assert "train_labels" in man["files"]
    s = expand_suite(raw)
    edm, cd = s.runs["gmm/edm-tiny-s0"], s.runs["gmm/cd-tiny-s0"]
    for r in (edm, cd):
        train_run(r, s, data, run_dir(tmp_path, s.name, r) / "ckpt" / "final.pt",
                  run_dir(tmp_path, s.name, edm) / "ckpt" / "final.pt" if r.teacher else None, progress=False)
    from benchmark.denoiser_eval import evaluate_denoiser

    rows = evaluate_denoiser(edm, run_dir(tmp_path, s.name, edm) / "ckpt" / "final.pt", data, tmp_path / "d.json", n=64)
    assert rows and all(np.isfinite(r["value"]) for r in rows)  # against the exact class-conditional denoiser
    comp = json.loads((run_dir(tmp_path, s.name, cd) / "compute.json").read_text())
    assert comp["conditioning"] == "class" and comp["num_classes"] == K
    info = {}
    for r in (edm, cd):
        out = run_dir(tmp_path, s.name, r) / "samples" / "steps2.npz"
        info[r.method] = sample_run(r, run_dir(tmp_path, s.name, r) / "ckpt" / "final.pt", 2, out,
                                    num_samples=40, batch=16, progress=False)
        with np.load(out) as z:
            assert np.bincount(z["labels"]).tolist() == [10] * K and len(z["samples"]) == 40
    assert info["edm"]["forwards_per_step"] == 1 and info["cd"]["forwards_per_step"] == 2
    assert info["cd"]["nfe"] == 2 and info["cd"]["nfe_guided"] == 4 and info["cd"]["guidance"] == 2.0
    assert info["cd"]["sample_flops_per_image"] == 4 * info["cd"]["forward_flops_per_example"]
    assert info["cd"]["nfe_counted"] == 4
    # results.csv counts NFE as the papers do (a guided step = 2 evaluations per sample): 2 guided CD steps
    # are 4 NFE, EDM's unguided Heun at 2 levels 3
    from benchmark.aggregate import aggregate
    from benchmark.metrics.evaluate import evaluate_samples

    for r in (edm, cd):
        for k in r.steps:
            d = run_dir(tmp_path, s.name, r)
            if not (d / "samples" / f"steps{k}.npz").exists():
                sample_run(r, d / "ckpt" / "final.pt", k, d / "samples" / f"steps{k}.npz", num_samples=40, batch=16,
                           progress=False)
            evaluate_samples(d / "samples" / f"steps{k}.npz", data, d / "metrics" / f"steps{k}.json", extractors=[],
                             refs={}, seed=0)
    df = aggregate(s, tmp_path, tmp_path / "results.csv")
    nfe = df.dropna(subset=["steps"]).groupby(["method", "steps"])["nfe"].unique()
    assert nfe[("cd", 2)].tolist() == [4] and nfe[("cd", 1)].tolist() == [2], nfe
    assert nfe[("edm", 2)].tolist() == [3], nfe


@pytest.mark.parametrize("kind", ["ddpmpp", "adm", "dit"])
def test_guidance_on_the_paper_networks(kind):
    """The batched 2B guided call equals two separate calls on the paper nets, and guidance 0 is the
    unconditional sampler there too."""
    cfg = {"ddpmpp": {"type": "ddpmpp", "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
                      "attn_resolutions": [8]},
           "adm": {"type": "adm", "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
                   "attn_resolutions": [8]},
           "dit": {"type": "dit", "size": "S", "depth": 2, "hidden": 32, "num_heads": 2, "patch": 4}}[kind]
    torch.manual_seed(0)
    net = build_net(cfg, (3, 16, 16), 1, num_classes=5).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, c, y = torch.randn(3, 3, 16, 16), torch.randn(3), torch.eye(5)[[0, 2, 4]]
    with torch.no_grad():
        f_c, f_u = net(x, c, labels=y), net(x, c)
        torch.testing.assert_close(guided_forward(net, x, c, y, 1.5), f_u + 1.5 * (f_c - f_u), rtol=1e-4, atol=1e-5)
    m = build_method("edm", {}, total_steps=1, data_shape=(3, 16, 16))
    noise = torch.randn(3, 3, 16, 16)
    torch.testing.assert_close(m.sample(net, noise, 2, labels=y, guidance=0.0), m.sample(net, noise, 2))
