"""flowvi.data: toy generators, strict table reading, IDX images, and the exact pre-processing
bijections (standardization, RealNVP's logit map) with their log-determinants."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import jacobian

from flowvi import data
from flowvi.transforms import LogitPreprocessingTransform, StandardizationTransform

F64 = torch.float64


# ---------------------------------------------------------------- toys


@pytest.mark.parametrize("name", sorted(data.TOYS))
def test_toy_shape_dtype_and_reproducibility(name):
    x = data.toy(name, 301, seed=3)
    assert x.shape == (301, 2) and x.dtype == torch.float32
    assert torch.equal(x, data.toy(name, 301, seed=3))
    assert not torch.equal(x, data.toy(name, 301, seed=4))
    x64 = data.toy(name, 301, seed=3, dtype=F64)
    assert x64.dtype == F64 and torch.equal(x64.float(), x)
    assert torch.isfinite(x64).all()


def test_toy_refuses_unknown_names_and_bad_arguments():
    with pytest.raises(ValueError, match="valid toy data sets: 2spirals, 8gaussians"):
        data.toy("spiral", 10)
    with pytest.raises(ValueError, match="positive integer"):
        data.toy("moons", 0)
    with pytest.raises(ValueError, match="noise"):
        data.toy("8gaussians", 10, noise=-0.1)
    with pytest.raises(ValueError, match="no noise"):
        data.toy("checkerboard", 10, noise=0.1)


def test_moons_without_noise_lie_on_the_two_unit_half_circles():
    x = data.toy("moons", 400, noise=0.0, dtype=F64)
    upper = (x - torch.tensor([0.0, 0.0], dtype=F64)).norm(dim=1)
    lower = (x - torch.tensor([1.0, 0.5], dtype=F64)).norm(dim=1)
    on_upper = (upper - 1).abs() < 1e-12
    on_lower = (lower - 1).abs() < 1e-12
    assert (on_upper | on_lower).all()
    assert (x[on_upper, 1] >= -1e-12).all() and (x[on_lower, 1] <= 0.5 + 1e-12).all()
    assert on_upper.sum() == 200
    noisy = data.toy("moons", 4000, dtype=F64)  # default noise 0.05: close to the curves
    gap = torch.minimum(
        (noisy.norm(dim=1) - 1).abs(), ((noisy - torch.tensor([1.0, 0.5])).norm(dim=1) - 1).abs()
    )
    assert 0.02 < gap.mean() < 0.06


def test_circles_have_two_radii():
    r = data.toy("circles", 500, noise=0.0, dtype=F64).norm(dim=1)
    outer, inner = (r - 1).abs() < 1e-12, (r - 0.5).abs() < 1e-12
    assert (outer | inner).all() and outer.sum() == 250
    r = data.toy("circles", 4000, dtype=F64).norm(dim=1)
    near = torch.minimum((r - 1).abs(), (r - 0.5).abs())
    assert near.median() < 0.06 and ((r > 0.65) & (r < 0.85)).float().mean() < 0.02


def test_8gaussians_are_near_their_8_centers_with_the_stated_spread():
    x = data.toy("8gaussians", 8000, seed=1, dtype=F64)
    angle = 2 * math.pi * torch.arange(8, dtype=F64) / 8
    centers = 2 * math.sqrt(2) * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    dist, k = torch.cdist(x, centers).min(1)
    counts = torch.bincount(k, minlength=8)
    assert counts.min() > 850 and counts.max() < 1150  # 1000 ± 4.8 sd
    sd = 1 / (2 * math.sqrt(2))
    # the distance to the center is Rayleigh(sd): E = sd √(π/2), E[dist²] = 2 sd²
    assert abs(dist.pow(2).mean() / (2 * sd**2) - 1) < 0.05
    for j in range(8):
        assert (x[k == j].mean(0) - centers[j]).norm() < 0.05


def test_pinwheel_points_lie_on_five_equal_curved_arms():
    x = data.toy("pinwheel", 10_000, dtype=F64)
    # x = 2 R(θ) f, θ = 2πk/5 + e^{f1}/4, |x| ≈ 2 f1 (f2 is small): undo the bend, then the
    # angle must sit near a multiple of 2π/5
    r, angle = x.norm(dim=1), torch.atan2(x[:, 1], x[:, 0])
    straight = torch.remainder(angle - 0.25 * torch.exp(r / 2), 2 * math.pi)
    arm = torch.round(straight / (2 * math.pi / 5))
    off = (straight - arm * 2 * math.pi / 5).abs()
    assert (off < 0.4).float().mean() > 0.97  # 0.63 for an isotropic Gaussian cloud
    counts = torch.bincount(arm.long() % 5, minlength=5)
    assert counts.min() > 1800 and counts.max() < 2200


def test_checkerboard_points_lie_in_the_dark_squares_uniformly():
    x = data.toy("checkerboard", 8000, dtype=F64)
    assert (x >= -4).all() and (x < 4).all()
    cells = torch.floor(x / 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    index = (cells[:, 0] + 2) * 4 + (cells[:, 1] + 2)
    counts = torch.bincount(index, minlength=16)
    assert (counts > 0).sum() == 8 and counts[counts > 0].min() > 880  # 1000 ± 3.7 sd


def test_2spirals_points_follow_the_two_spiral_arms():
    x = data.toy("2spirals", 10_000, dtype=F64)
    # arm point a·t(−cos t, sin t): angle = π − t (a = 1) or −t (a = −1), radius t (before /3),
    # so angle + radius ≡ 0 (mod π) up to the jitter and noise
    r, angle = 3 * x.norm(dim=1), torch.atan2(x[:, 1], x[:, 0])
    v = torch.remainder(angle + r, math.pi)[r > 2]
    off = torch.minimum(v, math.pi - v)
    assert off.median() < 0.45 and (off < 1).float().mean() > 0.95  # uniform: 0.79, 0.63
    assert (x[:, 0] > 0).float().mean().sub(0.5).abs() < 0.03  # the arms are mirror images
    assert r.max() < 3 * math.pi + 3


# ---------------------------------------------------------------- tables


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_read_csv_with_and_without_header(tmp_path):
    expected = torch.tensor([[1.0, -2.5], [3.0, 4e-3], [5.0, 6.0]], dtype=F64)
    plain = _write(tmp_path, "a.csv", "1,-2.5\n3, 4e-3\n\n5,6\n")
    header = _write(tmp_path, "b.csv", "x, y\n1,-2.5\n3,0.004\n5,6\n")
    spaces = _write(tmp_path, "c.csv", "# x y\n1 -2.5\n3 0.004\n5 6\n")  # np.savetxt's style
    for path in (plain, header, spaces):
        x = data.read_table(path)
        assert x.dtype == F64
        torch.testing.assert_close(x, expected, rtol=0, atol=0)


def test_read_npy(tmp_path):
    a = np.arange(12, dtype=np.int32).reshape(4, 3) ** 2
    np.save(tmp_path / "a.npy", a)
    x = data.read_table(tmp_path / "a.npy")
    assert x.dtype == F64 and torch.equal(x, torch.from_numpy(a).double())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("\n  \n", "is empty"),
        ("a,b\n", r"header \(a, b\) but no data rows"),
        ("1,2\n", "1 data row; at least 2"),
        ("1,2\n3,4\n5,6,7\n8,9\n", "line 3: 3 cells, expected 2 as on line 1"),
        ("a,b\n1,2\n3\n", "line 3: 1 cells, expected 2 as on the header"),
        ("1,2\n3,4\n5,abc\n", r"line 3, column 2: cannot read 'abc' as a number"),
        ("p,q\n1,2\n\n3,\n", r"line 4, column 2 \('q'\): cannot read '' as a number"),
        ("1,2\n3,nan\n", r"line 2, column 2: 'nan' is not finite"),
        ("a,b\n1,2\n-inf,4\n", r"line 3, column 1 \('a'\): '-inf' is not finite"),
        ("1,x\n3,4\n", "line 1: mixes numbers and text"),
        ("1,2,3\n1,5,3\n1,6,3\n", r"column 1 is constant.*column\(s\): 1, 3"),
        ("a,b,c\n1,5,3\n1,6,3\n", r"column 1 \('a'\) is constant \(every value is 1\)"),
    ],
)
def test_read_csv_refuses_bad_input_naming_the_line_or_column(tmp_path, text, message):
    path = _write(tmp_path, "bad.csv", text)
    with pytest.raises(ValueError, match=message) as info:
        data.read_table(path)
    assert "bad.csv" in str(info.value)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.arange(5.0), r"2-D array .* shape \(5,\)"),
        (np.zeros((2, 3, 4)), r"2-D array .* shape \(2, 3, 4\)"),
        (np.zeros((0, 3)), "empty"),
        (np.array([[1.0, 2.0], [3.0, np.inf], [np.nan, 1.0]]), r"row index 1, column index 1 \(0-"),
        (np.array([[1.0, 2.0], [1.0, 3.0]]), "column 0 is constant"),
        (np.array([["a", "b"], ["c", "d"]]), "real numbers, got dtype <U1"),
    ],
)
def test_read_npy_refuses_bad_input(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ValueError, match=message) as info:
        data.read_table(tmp_path / "bad.npy")
    assert "bad.npy" in str(info.value)


def test_read_table_refuses_missing_files_and_other_formats(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        data.read_table(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match=r"give a \.npy or \.csv file"):
        data.read_table(_write(tmp_path, "a.txt", "1 2\n3 4\n"))


# ---------------------------------------------------------------- exact bijections


def _autograd_log_det(t, x):
    """ln|det ∂t(x)/∂x| per row of ``x: (n, d)`` from the autograd Jacobian."""
    return torch.stack([torch.linalg.slogdet(jacobian(t, row))[1] for row in x])


def test_standardize_fit_inverse_and_ladj():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g, dtype=F64) * torch.tensor([0.1, 2.0, 30.0]) + 5
    t = StandardizationTransform.fit(x)
    y, ladj = t.call_and_ladj(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(3, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(y.std(0, correction=0), torch.ones(3, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(t.inv(y), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(ladj[:5], _autograd_log_det(t, x[:5]), rtol=0, atol=1e-10)
    assert ladj.shape == (50,)
    torch.testing.assert_close(ladj[0], -x.std(0, correction=0).log().sum(), rtol=0, atol=1e-12)
    _, ladj_inv = t.inv.call_and_ladj(y)
    torch.testing.assert_close(ladj_inv, -ladj, rtol=0, atol=0)
    # float32 input: float32 output, same map
    y32, ladj32 = t.call_and_ladj(x.float())
    assert y32.dtype == ladj32.dtype == torch.float32
    torch.testing.assert_close(y32, y.float())


def test_standardize_gives_log_prob_in_data_units_and_round_trips_safetensors(tmp_path):
    from safetensors.torch import load_file, save_file

    mean, std = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 3.0], dtype=F64)
    t = StandardizationTransform(mean, std)
    # a standard normal in y is N(mean, diag std²) in x: log_prob must match exactly
    x = torch.randn(20, 2, dtype=F64, generator=torch.Generator().manual_seed(1)) * 2
    y, ladj = t.call_and_ladj(x)
    log_p = torch.distributions.Normal(0, 1).log_prob(y).sum(-1) + ladj
    expected = torch.distributions.Normal(mean, std).log_prob(x).sum(-1)
    torch.testing.assert_close(log_p, expected, rtol=0, atol=1e-12)
    save_file(t.state(), tmp_path / "s.safetensors")
    back = StandardizationTransform.from_state(load_file(tmp_path / "s.safetensors"))
    assert torch.equal(back(x), t(x))


def test_standardize_refuses_bad_statistics():
    with pytest.raises(ValueError, match="column 1"):
        StandardizationTransform(torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="shape"):
        StandardizationTransform(torch.zeros(2), torch.ones(3))
    with pytest.raises(ValueError, match=r"column\(s\) \[1\]"):
        StandardizationTransform.fit(torch.tensor([[1.0, 2.0], [3.0, 2.0]]))
    with pytest.raises(ValueError, match="row 1"):
        StandardizationTransform.fit(torch.tensor([[1.0, 2.0], [math.nan, 2.0], [0.0, 1.0]]))


@pytest.mark.parametrize(("levels", "alpha"), [(256, 0.05), (17, 0.05), (2, 0.0), (256, 0.0)])
def test_logit_preprocess_inverse_and_ladj_against_autograd(levels, alpha):
    g = torch.Generator().manual_seed(levels)
    k = torch.randint(levels, (6, 4), generator=g)
    x = data.dequantize(k.to(F64), generator=g)
    assert ((x >= k) & (x < k + 1)).all()
    if alpha == 0:
        x = x.clamp(1e-6, levels - 1e-6)
    t = LogitPreprocessingTransform(levels, alpha)
    y, ladj = t.call_and_ladj(x)
    assert ladj.shape == (6,)
    torch.testing.assert_close(t.inv(y), x, rtol=0, atol=1e-10 * levels)
    torch.testing.assert_close(ladj, _autograd_log_det(t, x), rtol=0, atol=1e-8)
    s = alpha + (1 - 2 * alpha) * x / levels
    torch.testing.assert_close(y, torch.log(s / (1 - s)), rtol=0, atol=1e-10)
    _, ladj_inv = t.inv.call_and_ladj(y)
    torch.testing.assert_close(ladj_inv, -ladj, rtol=0, atol=1e-8)
    torch.testing.assert_close(ladj_inv, _autograd_log_det(t.inv, y), rtol=0, atol=1e-8)


def test_logit_preprocess_is_exact_at_the_edges_and_in_float32():
    t = LogitPreprocessingTransform(256, 0.05)
    x = torch.tensor([[0.0, 255.999999]], dtype=F64)
    y, ladj = t.call_and_ladj(x)
    s = torch.tensor([0.05, 0.05 + 0.9 * 255.999999 / 256], dtype=F64)
    expected = (math.log(0.9 / 256) - torch.log(s) - torch.log1p(-s)).sum()
    torch.testing.assert_close(ladj, expected.reshape(1), rtol=1e-12, atol=0)
    y32, ladj32 = t.call_and_ladj(x.float())
    assert y32.dtype == torch.float32 and torch.isfinite(y32).all()
    torch.testing.assert_close(y32, y.float())
    torch.testing.assert_close(ladj32, ladj.float())


@pytest.mark.parametrize("alpha", [0.05, 0.0])
def test_logit_preprocess_outside_its_domain_has_ladj_minus_inf_not_nan(alpha):
    """Rows with a component outside 0 < s < 1 (or on its edge) get ln|det| = -inf, and such
    components the placeholder image 0 with zero gradient; rows inside are untouched; NaN stays
    NaN."""
    levels = 4
    t = LogitPreprocessingTransform(levels, alpha)
    lo, hi = -alpha * levels / (1 - 2 * alpha), levels * (1 - alpha) / (1 - 2 * alpha)
    x = torch.tensor(
        [[1.0, 2.0], [lo - 0.1, 2.0], [1.0, hi + 0.1], [lo, 1.0], [1.0, hi], [-1e9, 1e9]],
        dtype=F64,
        requires_grad=True,
    )
    y, ladj = t.call_and_ladj(x)
    assert torch.isfinite(ladj[0]) and (ladj[1:] == -math.inf).all()
    assert torch.isfinite(y).all()
    inside_y, inside_ladj = t.call_and_ladj(x[:1].detach())
    torch.testing.assert_close(y[:1], inside_y, rtol=0, atol=0)
    torch.testing.assert_close(ladj[:1], inside_ladj, rtol=0, atol=0)
    outside = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    assert (y[outside] == 0).all()
    (grad,) = torch.autograd.grad(y.sum() + ladj[0], x)
    assert torch.isfinite(grad).all() and (grad[outside] == 0).all() and (grad[~outside] > 0).all()
    y_nan, ladj_nan = t.call_and_ladj(torch.tensor([[math.nan, 1.0]], dtype=F64))
    assert y_nan[0, 0].isnan() and ladj_nan.isnan().all()


def _gauss_legendre(a, b, n=200):
    nodes, weights = np.polynomial.legendre.leggauss(n)
    t = torch.tensor(nodes, dtype=F64)
    return (b - a) / 2 * t + (a + b) / 2, (b - a) / 2 * torch.tensor(weights, dtype=F64)


@pytest.mark.parametrize("alpha", [0.05, 0.0])
def test_change_of_variables_through_the_logit_map_integrates_to_one(alpha):
    levels = 4
    t = LogitPreprocessingTransform(levels, alpha)
    # 1. uniform data on [0, L): p_y(y) = (1/L) |dx/dy| on y ∈ [logit α, logit(1 − α)]
    lo = math.log(alpha / (1 - alpha)) if alpha else -40.0
    y, w = _gauss_legendre(lo, -lo, 400)
    _, ladj_inv = t.inv.call_and_ladj(y[:, None])
    assert abs((w * torch.exp(ladj_inv) / levels).sum().item() - 1) < 1e-10
    # 2. a logistic density in y is a density on [0, L) of mass σ(logit(1−α)) − σ(logit α) = 1 − 2α
    x, w = _gauss_legendre(0.0, float(levels), 400)
    y, ladj = t.call_and_ladj(x[:, None])
    y = y[:, 0]
    log_logistic = torch.nn.functional.logsigmoid(y) + torch.nn.functional.logsigmoid(-y)
    assert abs((w * torch.exp(log_logistic + ladj)).sum().item() - (1 - 2 * alpha)) < 1e-10


def test_bits_per_dim_of_the_uniform_density_is_log2_levels():
    d = 784
    nll = torch.tensor([d * math.log(256), d * math.log(17)], dtype=F64)
    torch.testing.assert_close(
        data.bits_per_dim(nll, d), torch.tensor([8.0, math.log2(17)], dtype=F64)
    )
    with pytest.raises(ValueError, match="positive integer"):
        data.bits_per_dim(nll, 0)


def test_logit_preprocess_refuses_bad_settings():
    with pytest.raises(ValueError, match="alpha"):
        LogitPreprocessingTransform(256, 0.5)
    with pytest.raises(ValueError, match="levels"):
        LogitPreprocessingTransform(1)


def test_dequantize_keeps_device_dtype_and_is_reproducible():
    k = torch.randint(256, (100, 5))
    x = data.dequantize(k)
    assert x.dtype == torch.get_default_dtype() and ((x >= k) & (x < k + 1)).all()
    a = data.dequantize(k.float(), generator=torch.Generator().manual_seed(0))
    b = data.dequantize(k.float(), generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert data.dequantize(k.double()).dtype == F64


# ---------------------------------------------------------------- images


def test_digits_shape_and_levels():
    x, levels, shape = data.digits()
    assert x.shape == (1797, 64) and levels == 17 and shape == (1, 8, 8)
    assert x.dtype == F64 and torch.equal(x, x.round())
    assert x.min() == 0 and x.max() == 16


def _idx(array, ndim=None):
    array = np.asarray(array, dtype=np.uint8)
    ndim = array.ndim if ndim is None else ndim
    header = bytes([0, 0, 8, ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.tobytes()


def _write_idx_set(directory, prefix, images, labels, *, gz):
    suffix = ".gz" if gz else ""
    write = gzip.compress if gz else bytes
    (directory / f"{prefix}-images-idx3-ubyte{suffix}").write_bytes(write(_idx(images)))
    (directory / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(write(_idx(labels)))


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_reads_what_was_written(tmp_path, gz):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (7, 3, 4))
    test = rng.integers(0, 256, (2, 3, 4))
    _write_idx_set(tmp_path, "train", train, [0, 1, 2, 3, 4, 5, 9], gz=gz)
    _write_idx_set(tmp_path, "t10k", test, [7, 8], gz=gz)
    x, y = data.read_idx(tmp_path, "train")
    assert x.shape == (7, 12) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(train.reshape(7, 12)).float())
    assert torch.equal(y, torch.tensor([0, 1, 2, 3, 4, 5, 9]))
    x, y = data.read_idx(tmp_path, "test", dtype=F64)
    assert x.dtype == F64 and torch.equal(x, torch.from_numpy(test.reshape(2, 12)).double())
    assert torch.equal(y, torch.tensor([7, 8]))


def test_read_idx_refuses_wrong_magic_truncation_and_missing_files(tmp_path):
    images = np.zeros((3, 2, 2))
    _write_idx_set(tmp_path, "train", images, [1, 2, 3], gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    good = path.read_bytes()
    path.write_bytes(_idx([1, 2, 3]))  # a labels file where images belong
    with pytest.raises(
        ValueError, match=r"train-images-idx3-ubyte: wrong magic number 00 00 08 01"
    ):
        data.read_idx(tmp_path, "train")
    path.write_bytes(good[:-1])
    with pytest.raises(
        ValueError, match=r"truncated: shape \(3, 2, 2\) needs 12 data bytes, found 11"
    ):
        data.read_idx(tmp_path, "train")
    path.write_bytes(gzip.compress(good)[:-10])
    path.rename(tmp_path / "train-images-idx3-ubyte.gz")
    with pytest.raises(ValueError, match="corrupt or truncated gzip"):
        data.read_idx(tmp_path, "train")
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(good)  # not gzipped: still read
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx([1, 2]))
    with pytest.raises(ValueError, match=r"3 images but .* 2 labels"):
        data.read_idx(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        data.read_idx(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="no such data directory"):
        data.read_idx(tmp_path / "nowhere", "train")
    with pytest.raises(ValueError, match="valid splits: test, train"):
        data.read_idx(tmp_path, "valid")
