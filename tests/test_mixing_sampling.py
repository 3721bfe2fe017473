"""The sampling of the mixing ops: Beta and gamma distributions (KS tests), and the documented box
rules transcribed in plain Python over the same Philox words (timm's CutMix integers, torchvision's
RandomErasing.get_params)."""
import math

import pytest
import torch

import recipe_kernels as rk
from recipe_kernels import mixing
from recipe_kernels._philox import draw_seed, philox4x32

from conftest import DEVICE

try:
    import scipy.stats
except ImportError:  # the KS tests then use the CDFs below
    scipy = None

KS_DRAWS = 100_000
KS_CRITICAL = 1.95  # sqrt(n) * D exceeds it with probability 0.001 under the null hypothesis


def beta_cdf(x, a):
    """Beta(a, a)'s CDF in float64 by quadrature (for when scipy is missing).

    For x <= 1/2 and a < 1: F(x) = (1 / (a B)) * integral_0^{x^a} (1 - s^(1/a))^(a-1) ds (t = s^(1/a)
    removes the singularity at 0; 1 - t >= 1/2 keeps the integrand smooth); for a >= 1 the density
    t^(a-1) (1-t)^(a-1) / B is smooth as it is. F(x) = 1 - F(1 - x) above 1/2.
    """
    x = x.double().clamp(0.0, 1.0)
    low = torch.minimum(x, 1.0 - x).unsqueeze(-1)
    beta_function = math.exp(2 * math.lgamma(a) - math.lgamma(2 * a))
    steps = torch.linspace(0.0, 1.0, 4001, dtype=torch.float64)
    if a < 1:
        s = low.pow(a) * steps
        below_half = torch.trapezoid((1.0 - s.pow(1.0 / a)).pow(a - 1.0), s, dim=-1) / (a * beta_function)
    else:
        t = low * steps
        below_half = torch.trapezoid((t * (1.0 - t)).pow(a - 1.0), t, dim=-1) / beta_function
    return torch.where(x <= 0.5, below_half, 1.0 - below_half)


def ks_statistic(sample, cdf):
    """sqrt(n) * sup |F_n - F| for a sample of floats rounded to their dtype (fp32 or fp64).

    A rounded value v stands for the interval of reals that round to it, [lo, hi] (midpoints to
    its neighbours), so F_n(v) is compared with F(hi) and F_n(just below v) with F(lo). Without
    this, the fp32 lambdas of Beta(0.2, 0.2) that round to exactly 1.0 (1.7% of them) would
    look like a defect of the sampler.
    """
    values, counts = torch.unique(sample, sorted=True, return_counts=True)
    n = sample.numel()
    below = torch.nextafter(values, torch.tensor(-math.inf, dtype=values.dtype)).double()
    above = torch.nextafter(values, torch.tensor(math.inf, dtype=values.dtype)).double()
    lo, hi = (below + values.double()) / 2, (above + values.double()) / 2
    at_or_below = counts.cumsum(0).double() / n
    strictly_below = at_or_below - counts.double() / n
    gap = torch.maximum((at_or_below - cdf(hi)).abs(), (strictly_below - cdf(lo)).abs())
    return math.sqrt(n) * gap.max().item()


def reference_cdf(distribution, fallback):
    """scipy's CDF of `distribution` when scipy is installed, else `fallback`, on float64 tensors."""
    if scipy is None:
        return fallback
    return lambda v: torch.from_numpy(distribution.cdf(v.numpy()))


def test_beta_cdf_fallback_matches_scipy():
    if scipy is None:
        pytest.skip("scipy is not installed")
    x = torch.tensor([1e-6, 0.01, 0.2, 0.5, 0.73, 0.999], dtype=torch.float64)
    for a in (0.2, 1.0, 4.0):
        expected = torch.tensor(scipy.stats.beta(a, a).cdf(x.numpy()))
        torch.testing.assert_close(beta_cdf(x, a), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_lambda_is_beta_distributed_ks(alpha):
    # 1e5 per-sample lambdas through the public call (MixUp does not correct lam).
    x = torch.zeros(KS_DRAWS, 1, 1, 1, device=DEVICE)
    target = torch.zeros(KS_DRAWS, dtype=torch.int64, device=DEVICE)
    generator = torch.Generator(device=DEVICE).manual_seed(int(alpha * 10))
    _, mixed = rk.mixup(x, target, alpha=alpha, per_sample=True, generator=generator, backend="torch")
    lam = mixed.lam.cpu()
    assert lam.dtype == torch.float32 and bool(((lam >= 0) & (lam <= 1)).all())
    fallback = lambda v: beta_cdf(v, alpha)  # noqa: E731
    distribution = scipy.stats.beta(alpha, alpha) if scipy is not None else None
    assert ks_statistic(lam, reference_cdf(distribution, fallback)) < KS_CRITICAL


@pytest.mark.parametrize("shape", [0.2, 1.0, 4.0])
def test_gamma_draws_ks(shape):
    # The gamma sampler alone (Marsaglia-Tsang, boosted below 1), against Gamma(shape)'s CDF.
    seed = torch.tensor([int(shape * 1000) + 7])
    words = mixing._philox_words(seed, KS_DRAWS, mixing.GAMMA_ATTEMPTS)
    g = mixing._log_gamma(torch.full((KS_DRAWS,), shape, dtype=torch.float64), words).exp()
    fallback = lambda v: torch.special.gammainc(torch.tensor(shape, dtype=torch.float64), v)  # noqa: E731
    distribution = scipy.stats.gamma(shape) if scipy is not None else None
    assert ks_statistic(g, reference_cdf(distribution, fallback)) < KS_CRITICAL


def test_gamma_all_attempts_rejected_takes_the_centre():
    # u1 = 2^-32 and u2 = 1/2 give z = -6.66, so 1 + c z < 0 and every attempt is rejected: G = shape - 1/3.
    words = torch.zeros(2, mixing.GAMMA_ATTEMPTS, 4, dtype=torch.int64)
    words[..., 1] = 1 << 31
    words[..., 3] = (1 << 32) - 1  # the boost's uniform: 1, so G' u^(1/a) = G'
    log_g = mixing._log_gamma(torch.tensor([1.0, 0.5], dtype=torch.float64), words)
    torch.testing.assert_close(log_g, torch.tensor([math.log(2 / 3), math.log(1.5 - 1 / 3)], dtype=torch.float64))


# ----------------------------------------------------------------------------- the rules, transcribed


def words_of(seed, counter):
    """The four Philox words of one counter, as Python ints."""
    return [int(w) for w in philox4x32(seed, torch.tensor([counter]))]


def transcribed_log_gamma(shape, attempts):
    """Marsaglia-Tsang in Python floats over per-attempt words (w0, w1, w2, w3)."""
    boosted = shape < 1
    d = (shape + 1 if boosted else shape) - 1 / 3
    c = 1 / math.sqrt(9 * d)
    log_g = math.log(d)  # every attempt rejected: v = 1
    for w0, w1, w2, _ in attempts:
        z = math.sqrt(-2 * math.log((w0 + 1) / 2**32)) * math.cos(2 * math.pi * (w1 / 2**32))
        v = (1 + c * z) ** 3
        if v > 0 and math.log((w2 + 1) / 2**32) < 0.5 * z * z + d - d * v + d * math.log(v):
            log_g = math.log(d) + math.log(v)
            break
    if boosted:
        log_g += math.log((attempts[0][3] + 1) / 2**32) / shape
    return log_g


def test_cutmix_follows_the_transcribed_rules():
    # timm's rule: lam ~ Beta(alpha), cut = floor(side * sqrt(1 - lam)), centre uniform over the pixels,
    # box = centre -/+ floor(cut / 2) clipped; lam corrected to the kept area.
    n, height, width, alpha = 16, 9, 14, 0.7
    x = torch.rand(n, 2, height, width, device=DEVICE)
    target = torch.arange(n, device=DEVICE)
    generator = torch.Generator(device=DEVICE).manual_seed(11)
    seed = draw_seed(DEVICE, generator).cpu()
    generator.manual_seed(11)
    out, mixed = rk.cutmix(x, target, alpha=alpha, per_sample=True, generator=generator, backend="torch")
    calls = mixing.MIX_CALLS_PER_DRAW
    for i in range(n):
        per_call = [words_of(seed, i * calls + c) for c in range(calls)]
        _, _, word_y, word_x = per_call[0]
        attempts = mixing.GAMMA_ATTEMPTS
        log_g0 = transcribed_log_gamma(alpha, per_call[1:1 + attempts])
        log_g1 = transcribed_log_gamma(alpha, per_call[1 + attempts:1 + 2 * attempts])
        lam = torch.tensor(1 / (1 + math.exp(log_g1 - log_g0)), dtype=torch.float32)
        side = torch.tensor(math.sqrt(float(1 - lam)), dtype=torch.float32)  # fp32 correctly rounded, as documented
        half_h = int(math.floor(float(side * height * 0.5)))
        half_w = int(math.floor(float(side * width * 0.5)))
        cy, cx = (word_y * height) >> 32, (word_x * width) >> 32
        y0, y1 = max(cy - half_h, 0), min(cy + half_h, height)
        x0, x1 = max(cx - half_w, 0), min(cx + half_w, width)
        expected = x[i].clone()
        expected[:, y0:y1, x0:x1] = x[n - 1 - i][:, y0:y1, x0:x1]
        assert torch.equal(out[i], expected), i
        kept = torch.tensor(1 - (y1 - y0) * (x1 - x0) / (height * width), dtype=torch.float32)
        assert mixed.lam[i].item() == kept.item(), i


def transcribed_erasing(words, height, width, p, scale, ratio):
    """torchvision's RandomErasing.get_params (and forward's p test) over our uniforms: (top, left, h, w) or None."""
    if not words[0][0] < round(p * 2**32):
        return None
    area = height * width
    for w_area, w_ratio, w_top, w_left in words[1:]:
        erase_area = area * (scale[0] + (scale[1] - scale[0]) * (w_area / 2**32))
        log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * (w_ratio / 2**32)
        aspect_ratio = math.exp(log_ratio)
        h = int(round(math.sqrt(erase_area * aspect_ratio)))
        w = int(round(math.sqrt(erase_area / aspect_ratio)))
        if not (h < height and w < width):
            continue
        top = (w_top * (height - h + 1)) >> 32
        left = (w_left * (width - w + 1)) >> 32
        return top, left, h, w
    return None  # torchvision returns the whole image unchanged


def test_random_erasing_follows_torchvisions_rule_including_empty_boxes(backend):
    # Extreme aspects on a small image: many candidates have h or w = 0 (accepted, erasing nothing) or
    # do not fit (skipped); the first that passes torchvision's test decides.
    n, height, width = 64, 6, 7
    p, scale, ratio = 0.9, (0.01, 0.5), (0.05, 20.0)
    x = torch.rand(n, 2, height, width, device=DEVICE) + 1.0  # no pixel is the fill value
    generator = torch.Generator(device=DEVICE).manual_seed(5)
    seed = draw_seed(DEVICE, generator).cpu()
    generator.manual_seed(5)
    out = rk.random_erasing(x, p=p, scale=scale, ratio=ratio, value=-1.0, generator=generator, backend=backend)
    calls = mixing.ERASE_CALLS_PER_SAMPLE
    empty = 0
    for i in range(n):
        words = [words_of(seed, i * calls + c) for c in range(calls)]
        expected = x[i].clone()
        box = transcribed_erasing(words, height, width, p, scale, ratio)
        if box is not None:
            top, left, h, w = box
            expected[:, top:top + h, left:left + w] = -1.0
            empty += h * w == 0
        assert torch.equal(out[i], expected), i
    assert empty > 0  # the case the rule is about occurred


# ----------------------------------------------------------------------------- one sampling kernel, every backend


def test_exact_elementary_functions_are_accurate():
    # The float64 series that every backend evaluates in the same order, against libm (a few ulps).
    x = torch.cat([torch.rand(20_000, dtype=torch.float64) * 30, torch.tensor([2.0**-32, 0.5, 1.0, 2.0**60])])
    torch.testing.assert_close(mixing._log_exact(x), x.log(), rtol=4e-16, atol=4e-16)
    e = torch.linspace(-120.0, 120.0, 20_001, dtype=torch.float64)
    torch.testing.assert_close(mixing._exp_exact(e), e.exp(), rtol=4e-16, atol=0.0)
    u = torch.randint(0, 1 << 32, (20_000,), dtype=torch.int64).double() / 2**32
    torch.testing.assert_close(mixing._cos_two_pi_exact(u), torch.cos(2 * math.pi * u), rtol=0.0, atol=2e-15)


@pytest.mark.parametrize("rule", [
    dict(cutmix_alpha=1.0, mixup_alpha=0.2, switch_prob=0.5, prob=0.8, correct_lam=True),
    dict(cutmix_alpha=4.0, mixup_alpha=0.0, switch_prob=1.0, prob=1.0, correct_lam=False),
    dict(cutmix_alpha=0.0, mixup_alpha=0.05, switch_prob=0.0, prob=1.0, correct_lam=True),
])
def test_mixing_sampler_is_bit_identical_across_backends(rule):
    # 1500 draws: tiny lambdas (sqrt(1 - lam) at the fp32 rounding edge), every mode, odd image sides.
    seed = torch.tensor([123456789123], device=DEVICE)
    expected = mixing._sample_mixing(seed, 1500, 224, 97, backend="torch", **rule)
    for backend in ("triton",) + (("cuda",) if DEVICE.type == "cuda" else ()):
        actual = mixing._sample_mixing(seed, 1500, 224, 97, backend=backend, **rule)
        for a, e in zip(actual, expected):
            assert a.dtype == e.dtype and torch.equal(a, e), backend


@pytest.mark.parametrize("p, scale, ratio", [(0.5, (0.02, 0.33), (0.3, 3.3)), (0.9, (0.01, 0.5), (0.05, 20.0))])
def test_erasing_sampler_is_bit_identical_across_backends(p, scale, ratio):
    seed = torch.tensor([-98765432123], device=DEVICE)
    expected = mixing._erasing_boxes(seed, 1500, 31, 17, p, scale, ratio, "torch")
    for backend in ("triton",) + (("cuda",) if DEVICE.type == "cuda" else ()):
        actual = mixing._erasing_boxes(seed, 1500, 31, 17, p, scale, ratio, backend)
        for a, e in zip(actual, expected):
            assert a.dtype == e.dtype and torch.equal(a, e), backend
