"""Physics-paired synthetic data: one 2-D earth model → a seismic image AND a 3-component seismogram.

No public dataset pairs seismic images with waveforms, so this module draws both from the same
earth model, deterministically from a seed (`generate_pair(seed, index)`).

Earth model (`draw_earth_model`). A 224×224 section, DZ = 8 m per row (1.79 km deep), DX = 12.5 m
per trace. 4–10 sedimentary units with Dirichlet thicknesses are deformed by folds (sum of two
sines whose amplitude grows with depth), a regional dip, a normal or reverse fault (probability
0.6, dip 55–80°, throw 4–30 rows) and an optional salt diapir (probability 0.35) that domes the
layers above it. Units follow a compaction trend Vp ≈ 1800 m/s + 0.8·depth(m) ± 250 m/s with
occasional hard (carbonate) beds, Vp/Vs falling from ~2.5 to 1.65 as Vp rises, density from
Gardner's law ρ = 310·Vp^0.25; salt has Vp 4500, Vs 2550 m/s, ρ 2150 kg/m³. A fine layered
texture (±3 % along the stratigraphic coordinate) follows the folds. Below the section lies a
crustal half-space (Vp 5.8–6.4 km/s, Vp/Vs 1.70–1.78) that hosts the earthquake.

Attenuation. Each section draws one quality-factor scale q (log-uniform 8–160): Qs = q·Vs[km/s],
Qp = 2·Qs in every cell (`section_q`). The same Q shapes both modalities: it lowers the image's
wavelet frequency with two-way time and it sets the seismogram's near-surface high-frequency decay
(the site κ), the shared physics a model can align on.

Image (`render_image`). Acoustic impedance ρ·Vp is put on a FIXED two-way-time axis (row i at
i·6 ms, 0–1.34 s; times past the section base read the crust, so the basement reflector shows),
vertical-incidence reflectivity r = ΔZ / (2 Z̄) is convolved with a non-stationary zero-phase
Ricker wavelet: a source peak of 28–34 Hz lowered at every two-way time by the section's
accumulated two-way t* (peak of f²·e^(−f²/fp²)·e^(−π f t*)); then band-limited noise, laterally
correlated over 0.5–3 traces, at signal-to-noise ratio 2–12. Labels, all on the image grid:
`facies` (unit id, 10 = salt), `salt` mask, `reflectivity`, `clean` image, and the SFM
interpolation `trace_mask` (10 of the 14 16-trace blocks kept, 1 = kept); `wavelet_hz` is the mean
peak frequency (q itself is not in the example: the tfds feature spec is fixed).

Seismogram (`render_waveform`). A station sits on the surface at the image's centre trace
(x = 112); a micro-earthquake (magnitude proxy 0.5–1.0, corner 10^(1.9−0.5·M) Hz clipped to
30 Hz) lies 3–15 km deep in the crust at 2–20 km epicentral distance. Through the station's 1-D
column (every 8 m cell plus the crust) the P and S ray parameters are found by bisection, so the
travel times, S−P time and incidence angles come from the section's velocities; the crustal path
has Qs = 200·Vs[km/s]. The column under the station acts as a site filter (`site_response`): the
vertical-incidence Haskell–Thomson transfer function of its units (damped by their Q) over the
crust, applied to P (with Vp, Qp) and to S (with Vs, Qs). It holds the sediment resonances
(f0 ≈ Vs/4H), the free-surface reverberations of every interface (delays = their two-way times,
e.g. PpPp at the image row of the reflector) and the site κ. Ps and PpPs conversions at the four
strongest interfaces are added on the radial, scaled by first-order coefficients.
Every phase is a Brune source pulse delayed exactly in the frequency domain and attenuated by
Futterman's causal Q operator. P is polarised on Z/radial, SV on radial/Z and SH on transverse,
rotated to Z, N, E by a random back-azimuth. Weak scattered codas (site-filtered too, peaks
2–7 % of their phase's) follow P and S, so the first second after P holds the site's
reverberations rather than random scattering. Coloured background noise (microseism peak near
0.2 Hz, a 1/f floor and sometimes a cultural line at 5–20 Hz) is added at a random SNR
(25–45 dB, peak signal over noise std). The record is
3001 samples at 100 Hz, [T, 3] in Z, N, E order, with P/S pick sample indices and the event
metadata (depth, epicentral distance, magnitude proxy, back-azimuth).

Shared physics, not a shared shortcut: the section's Q sets both the image's frequency decay
with time and the record's high-frequency decay; sediment thickness and velocities set both the
image's reflector times (on an absolute time axis, with the station's column at the centre trace)
and the record's resonances, reverberation and conversion delays; event size, distance, depth,
back-azimuth, noise and coda stay nuisances the image cannot know. Matching the two takes
learning (contrastive alignment), not copying.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.fft import next_fast_len
from scipy.ndimage import gaussian_filter1d

from seisfuse.data.transforms import SAMPLING_RATE as FS
from seisfuse.data.transforms import WINDOW as T

H = W = 224
DZ = 8.0  # m per image row in depth
DX = 12.5  # m per trace
MAX_LAYERS = 10
SALT_ID = MAX_LAYERS
N_FACIES = MAX_LAYERS + 1
SALT_VP, SALT_VS, SALT_RHO = 4500.0, 2550.0, 2150.0
_NFFT = 4096
DT_IMAGE = 0.006  # s of two-way time per image row (fixed: rows map to absolute delays)
STATION = W // 2  # the station sits on the image's centre trace
F_SOURCE = (28.0, 34.0)  # Hz, peak frequency of the surface survey's source wavelet


@dataclasses.dataclass(frozen=True)
class EarthModel:
    """Elastic properties on the 224×224 depth grid plus the crust below it."""

    facies: np.ndarray  # [H, W] int32 unit id, SALT_ID for salt
    vp: np.ndarray  # [H, W] float64 m/s
    vs: np.ndarray  # [H, W] float64 m/s
    rho: np.ndarray  # [H, W] float64 kg/m^3
    crust_vp: float
    crust_vs: float
    crust_rho: float
    n_layers: int
    has_salt: bool
    q_factor: float = 50.0  # section Qs = q_factor * Vs[km/s], Qp = 2 Qs


def gardner_density(vp: np.ndarray) -> np.ndarray:
    """Gardner's law, kg/m^3 from m/s."""
    return 310.0 * np.asarray(vp) ** 0.25


def draw_earth_model(rng: np.random.Generator) -> EarthModel:
    """Layered, folded, faulted section with an optional salt diapir (see module docstring)."""
    z = np.arange(H, dtype=np.float64)[:, None]
    x = np.arange(W, dtype=np.float64)[None, :]
    n_layers = int(rng.integers(4, MAX_LAYERS + 1))
    thickness = rng.dirichlet(np.full(n_layers, 2.0)) * (H + 40.0)
    tops = np.cumsum(thickness)[:-1]  # stratigraphic depth (rows) of the base of each unit

    growth = 0.4 + 0.6 * z / H
    fold = sum(
        rng.uniform(0, 10) * np.sin(2 * np.pi * x / rng.uniform(120, 600) + rng.uniform(0, 2 * np.pi))
        for _ in range(2)
    )
    uplift = growth * fold + rng.uniform(-0.12, 0.12) * (x - W / 2)

    has_salt = bool(rng.random() < 0.35)
    salt = np.zeros((H, W), bool)
    if has_salt:
        xc, top, w0 = rng.uniform(50, W - 50), rng.uniform(50, 150), rng.uniform(14, 40)
        half_width = w0 * (1.0 + 0.5 * np.clip(z - top, 0, None) / H)
        cap = rng.uniform(8, 30)
        salt = (np.abs(x - xc) <= half_width) & (z >= top + cap * ((x - xc) / half_width) ** 2)
        uplift = uplift + rng.uniform(6, 24) * np.exp(-(((x - xc) / (1.6 * w0)) ** 2)) * growth

    zeta = z - uplift
    if rng.random() < 0.6:
        dip = np.deg2rad(rng.uniform(55, 80)) * rng.choice([-1.0, 1.0])
        fault_x = rng.uniform(40, W - 40) + (z - H / 2) / np.tan(dip)
        throw = rng.uniform(4, 30) * rng.choice([-1.0, 1.0])
        zeta = zeta - throw * (x > fault_x)

    unit = np.searchsorted(tops, zeta).astype(np.int32)  # 0 .. n_layers-1
    mid_depth_m = (np.concatenate([[0.0], tops]) + thickness / 2) * DZ
    vp_unit = 1800.0 + 0.8 * mid_depth_m + rng.normal(0, 250, n_layers)
    vp_unit += 900.0 * (rng.random(n_layers) < 0.15)  # occasional carbonate bed
    vp_unit = np.clip(vp_unit, 1550.0, 5200.0)
    ratio_unit = np.clip(3.2 - 0.4e-3 * vp_unit + rng.normal(0, 0.08, n_layers), 1.65, 3.0)

    texture_axis = np.arange(-120.0, H + 160.0, 0.5)
    texture = gaussian_filter1d(rng.normal(0, 1, texture_axis.size), 1.5)
    texture = 0.03 * texture / (texture.std() + 1e-12)
    vp = vp_unit[unit] * (1.0 + np.interp(zeta, texture_axis, texture))
    vs = vp / ratio_unit[unit]
    rho = gardner_density(vp)
    facies = np.where(salt, SALT_ID, unit).astype(np.int32)
    vp, vs, rho = (
        np.where(salt, value, field) for value, field in ((SALT_VP, vp), (SALT_VS, vs), (SALT_RHO, rho))
    )
    crust_vp = rng.uniform(5800.0, 6400.0)
    crust_vs = crust_vp / rng.uniform(1.70, 1.78)
    q_factor = float(np.exp(rng.uniform(np.log(8.0), np.log(160.0))))
    return EarthModel(
        facies, vp, vs, rho, crust_vp, crust_vs, float(gardner_density(crust_vp)), n_layers, has_salt,
        q_factor,
    )


def section_q(model: EarthModel) -> tuple[np.ndarray, np.ndarray]:
    """(Qp, Qs) of every cell of the section: Qs = q_factor·Vs[km/s], Qp = 2·Qs."""
    qs = model.q_factor * model.vs / 1000.0
    return 2.0 * qs, qs


def ricker(cycles_per_sample: float) -> np.ndarray:
    """Zero-phase Ricker wavelet sampled at 1, peak 1, for a peak frequency in cycles/sample."""
    half = int(np.ceil(1.5 / cycles_per_sample))
    a = (np.pi * cycles_per_sample * np.arange(-half, half + 1)) ** 2
    return (1.0 - 2.0 * a) * np.exp(-a)


def _depth_to_time(model: EarthModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Impedance, facies and two-way t* on the fixed two-way-time axis (row i at i·DT_IMAGE).

    Times past the base of the section read the crust (the basement reflection)."""
    twt = 2.0 * np.cumsum(DZ / model.vp, axis=0)  # at the base of each cell, increasing down
    qp, _ = section_q(model)
    tstar = 2.0 * np.cumsum(DZ / (model.vp * qp), axis=0)
    t_axis = (np.arange(H) + 0.5) * DT_IMAGE
    # Cell holding each time sample (H = crust), all columns in one search: columns laid end to
    # end 100 s apart form one increasing array.
    cols = np.arange(W)
    offset = 100.0 * cols
    idx = np.searchsorted((twt + offset).T.ravel(), (t_axis[:, None] + offset).T.ravel())
    idx = idx.reshape(W, H).T - H * cols
    cell = np.minimum(idx, H - 1)
    z_t = np.where(idx < H, (model.rho * model.vp)[cell, cols], model.crust_rho * model.crust_vp)
    f_t = model.facies[cell, cols].astype(np.int32)
    # t* interpolated linearly in two-way time, held at the end values outside the section.
    prev = np.maximum(idx - 1, 0)
    below, above = twt[prev, cols], twt[cell, cols]
    frac = np.clip((t_axis[:, None] - below) / np.maximum(above - below, 1e-300), 0.0, 1.0)
    ts_t = tstar[prev, cols] + frac * (tstar[cell, cols] - tstar[prev, cols])
    ts_t = np.where(idx >= H, tstar[-1], ts_t)
    return z_t, f_t, ts_t


def attenuated_peak(f_peak: float, tstar: np.ndarray) -> np.ndarray:
    """Peak frequency of a Ricker wavelet (peak f_peak) after the amplitude loss exp(−π f t*):
    the root of f² + (π t* f_peak²/2) f − f_peak² = 0."""
    a = 0.5 * np.pi * np.asarray(tstar) * f_peak**2
    return 0.5 * (np.sqrt(a**2 + 4.0 * f_peak**2) - a)


def render_image(model: EarthModel, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Seismic image [H, W, 1] and its labels (see module docstring)."""
    impedance, facies, tstar = _depth_to_time(model)
    refl = np.zeros((H, W))
    refl[:-1] = (impedance[1:] - impedance[:-1]) / (impedance[1:] + impedance[:-1])
    f_src = rng.uniform(*F_SOURCE)
    # Non-stationary wavelet: the section's Q lowers the peak frequency with two-way time.
    f_row = attenuated_peak(f_src, tstar.mean(axis=1))  # [H] Hz
    grid = np.linspace(f_row.min(), f_row.max() + 1e-6, 5)
    noise_src = rng.normal(0, 1, (H, W))
    # Both fields convolved down the time axis with each wavelet of the grid (zero-phase, centred),
    # blended by row: one forward FFT of the pair, one inverse per wavelet.
    wavelets = [ricker(fk * DT_IMAGE) for fk in grid]
    n_fft = next_fast_len(H + max(w.size for w in wavelets) - 1)
    spectra = np.fft.rfft(np.stack([refl, noise_src]), n_fft, axis=1)
    blended = np.zeros((2, H, W))
    pos = np.interp(f_row, grid, np.arange(grid.size))
    for k, wavelet in enumerate(wavelets):
        weight = np.clip(1.0 - np.abs(pos - k), 0.0, 1.0)[:, None]
        if not weight.any():
            continue
        full = np.fft.irfft(spectra * np.fft.rfft(wavelet, n_fft)[:, None], n_fft, axis=1)
        start = (wavelet.size - 1) // 2
        blended += weight * full[:, start:start + H]
    clean, noise = blended
    noise = gaussian_filter1d(noise, rng.uniform(0.5, 3.0), axis=1)
    snr = rng.uniform(2.0, 12.0)
    scale = clean.std() + 1e-12
    noisy = clean + noise * (scale / (snr * noise.std() + 1e-12))
    keep = np.zeros(W // 16, bool)
    keep[rng.choice(W // 16, int(0.75 * W / 16), replace=False)] = True
    trace_mask = np.repeat(keep, 16).astype(np.float32)[None, :, None].repeat(H, axis=0)
    return {
        "image": (noisy / scale)[..., None].astype(np.float32),
        "clean": (clean / scale)[..., None].astype(np.float32),
        "reflectivity": refl[..., None].astype(np.float32),
        "facies": facies.astype(np.int32),
        "salt": (facies == SALT_ID).astype(np.int32),
        "trace_mask": trace_mask,
        "time_domain": np.int32(1),
        "wavelet_hz": np.float32(f_row.mean()),
        "image_snr": np.float32(snr),
    }


def direct_ray(thick: np.ndarray, vel: np.ndarray, distance: float) -> tuple[float, np.ndarray]:
    """Direct ray from the bottom of a layer stack to a surface point `distance` m away.

    thick, vel: layer thicknesses (m) and velocities (m/s), top first. The ray parameter p (s/m)
    solves Σ hᵢ p vᵢ / √(1 − p² vᵢ²) = distance by bisection; returns p and the time per layer.
    """
    lo, hi = 0.0, (1.0 - 1e-9) / vel.max()
    for _ in range(60):
        p = 0.5 * (lo + hi)
        cos = np.sqrt(1.0 - (p * vel) ** 2)
        if np.sum(thick * p * vel / cos) < distance:
            lo = p
        else:
            hi = p
    p = 0.5 * (lo + hi)
    return p, thick / (vel * np.sqrt(1.0 - (p * vel) ** 2))


def _column_interfaces(model: EarthModel, trace: int, n_max: int = 4) -> list[dict]:
    """The strongest unit boundaries under the station (and the section base), as dicts."""
    fac = model.facies[:, trace]
    cuts = list(np.flatnonzero(fac[1:] != fac[:-1]) + 1) + [H]
    bounds = [0] + cuts
    units = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        units.append((model.vp[a:b, trace].mean(), model.vs[a:b, trace].mean(), model.rho[a:b, trace].mean()))
    units.append((model.crust_vp, model.crust_vs, model.crust_rho))
    out = []
    for k, depth_row in enumerate(cuts):
        (vp1, vs1, r1), (vp2, vs2, r2) = units[k], units[k + 1]
        out.append(
            {
                "row": depth_row,
                "rp": (r2 * vp2 - r1 * vp1) / (r2 * vp2 + r1 * vp1),
                "rs": (r2 * vs2 - r1 * vs1) / (r2 * vs2 + r1 * vs1),
                "dvs": 2 * (vs2 - vs1) / (vs2 + vs1),
                "drho": 2 * (r2 - r1) / (r2 + r1),
            }
        )
    out.sort(key=lambda d: -abs(d["rp"]))
    return out[:n_max]


def _brune(f: np.ndarray, fc: float) -> np.ndarray:
    """Ground-velocity spectrum of a Brune source, unit low-frequency displacement."""
    wc, w = 2 * np.pi * fc, 2j * np.pi * f
    return w * wc**2 / (wc + w) ** 2


def _phase_spectrum(f: np.ndarray, delay: np.ndarray, tstar: np.ndarray) -> np.ndarray:
    """Exact delays and Futterman causal attenuation for each phase: [n_phase, n_freq]."""
    f_ref = FS / 2
    log_term = np.log(np.maximum(f, 1e-3) / f_ref)
    return np.exp(
        -2j * np.pi * f * delay[:, None] - np.pi * f * tstar[:, None] + 2j * f * tstar[:, None] * log_term
    )


def _coloured_noise(rng: np.random.Generator, f: np.ndarray) -> np.ndarray:
    """Background noise [3, T]: microseism peak, 1/f floor, sometimes a cultural line."""
    fs = np.maximum(f, 0.01)
    shape = rng.uniform(0.2, 2.0) * np.exp(-0.5 * (np.log(fs / rng.uniform(0.12, 0.3)) / 0.35) ** 2)
    shape += 0.2 * fs ** -rng.uniform(0.3, 1.2)
    if rng.random() < 0.3:
        shape += 0.5 * np.exp(-0.5 * ((f - rng.uniform(5, 20)) / 0.3) ** 2)
    shape[0] = 0.0
    spec = (rng.normal(size=(3, f.size)) + 1j * rng.normal(size=(3, f.size))) * shape
    noise = np.fft.irfft(spec, _NFFT)[:, :T]
    return noise / (noise.std(axis=1, keepdims=True) + 1e-12)


def column_units(model: EarthModel, trace: int) -> dict[str, np.ndarray]:
    """The section's units under `trace` as a layer stack (top first): thickness (m), Vp, Vs, ρ,
    Qp, Qs (cell means over each unit)."""
    fac = model.facies[:, trace]
    bounds = [0] + list(np.flatnonzero(fac[1:] != fac[:-1]) + 1) + [H]
    qp, qs = section_q(model)
    out = {k: [] for k in ("h", "vp", "vs", "rho", "qp", "qs")}
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        out["h"].append((b - a) * DZ)
        for key, field in (("vp", model.vp), ("vs", model.vs), ("rho", model.rho), ("qp", qp), ("qs", qs)):
            out[key].append(field[a:b, trace].mean())
    return {k: np.asarray(v) for k, v in out.items()}


def site_response(f: np.ndarray, h: np.ndarray, v: np.ndarray, rho: np.ndarray, q: np.ndarray,
                  v_half: float, rho_half: float) -> np.ndarray:
    """Vertical-incidence transfer function of a damped layer stack on an elastic half-space.

    Haskell–Thomson propagation of (displacement, stress) from the free surface down to the
    half-space, complex velocities v(1 + i/(2Q)); returns surface displacement per unit
    up-going wave in the half-space (2 when there are no layers), with the vertical travel time
    through the stack removed so the direct arrival keeps its time. It holds the resonances
    (f0 ≈ Vs/(4H) of the sediments), the free-surface reverberations of every interface (delays
    = the interfaces' two-way times) and the stack's attenuation.
    """
    w = 2 * np.pi * np.maximum(f, 1e-4)
    u, tau = np.ones_like(w, dtype=complex), np.zeros_like(w, dtype=complex)
    for hj, vj, rj, qj in zip(h, v, rho, q, strict=True):
        vc = vj * (1 + 0.5j / qj)
        k, mu = w / vc, rj * vc**2
        c, s_ = np.cos(k * hj), np.sin(k * hj)
        u, tau = c * u + s_ / (mu * k) * tau, -mu * k * s_ * u + c * tau
    mu_half = rho_half * v_half**2
    up = 0.5 * (u + tau / (1j * mu_half * w / v_half))
    return np.exp(1j * w * np.sum(h / v)) / up


def render_waveform(model: EarthModel, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """3-component seismogram [T, 3] (Z, N, E) at a station on the section (see module docstring)."""
    station = STATION
    depth = rng.uniform(3000.0, 15000.0)
    distance = rng.uniform(2000.0, 20000.0)
    magnitude = rng.uniform(0.5, 1.0)
    baz = rng.uniform(0.0, 360.0)

    vp_col, vs_col = model.vp[:, station], model.vs[:, station]
    thick = np.append(np.full(H, DZ), depth - H * DZ)
    vp_all, vs_all = np.append(vp_col, model.crust_vp), np.append(vs_col, model.crust_vs)
    p_p, times_p = direct_ray(thick, vp_all, distance)
    p_s, times_s = direct_ray(thick, vs_all, distance)
    # The section's attenuation enters through the site response; the crust has Qs = 200·Vs[km/s].
    q_crust = 200.0 * model.crust_vs / 1000.0
    tstar_p, tstar_s = times_p[-1] / (2 * q_crust), times_s[-1] / q_crust
    t_p, t_s = times_p.sum(), times_s.sum()

    sp_samples = int(round((t_s - t_p) * FS))
    p_sample = int(rng.integers(200, max(201, T - sp_samples - 300)))
    tau_p = p_sample / FS
    tau_s = tau_p + (t_s - t_p)
    s_sample = int(round(tau_s * FS))

    sin_ip, sin_is = p_p * vp_col[0], p_s * vs_col[0]
    cos_ip, cos_is = np.sqrt(1 - sin_ip**2), np.sqrt(1 - sin_is**2)
    # Site amplification is in the transfer functions; these are source / path amplitudes.
    amp_p = rng.uniform(0.5, 1.0)
    amp_s = rng.uniform(0.5, 1.0) * (model.crust_vp / model.crust_vs) ** 3
    psi = rng.uniform(0, 2 * np.pi)  # SV / SH partition of the S radiation

    # Phases in (Z, R, T) with delays, t* and family (0 = P, 1 = S).
    phases = [
        ((cos_ip, sin_ip, 0.0), tau_p, tstar_p, 0),
        ((-sin_is * np.cos(psi), cos_is * np.cos(psi), np.sin(psi)), tau_s, tstar_s, 1),
    ]
    _, qs_sec = section_q(model)
    q_sed = float(np.mean(qs_sec[:, station]))
    for iface in _column_interfaces(model, station):
        k = iface["row"]
        eta_p = np.sqrt(np.maximum(vp_col[:k] ** -2 - p_p**2, 0)) * DZ
        eta_s = np.sqrt(np.maximum(vs_col[:k] ** -2 - p_p**2, 0)) * DZ
        del_ps, del_ppps = eta_s.sum() - eta_p.sum(), eta_s.sum() + eta_p.sum()
        a_ps = np.clip(0.5 * sin_ip * (iface["drho"] + 2 * iface["dvs"]), -0.5, 0.5)
        phases += [
            ((0.1 * a_ps, a_ps, 0.0), tau_p + del_ps, tstar_p + del_ps / q_sed, 0),
            ((0.0, -iface["rp"] * a_ps, 0.0), tau_p + del_ppps, tstar_p + del_ppps / q_sed, 0),
        ]
    zrt = np.array([ph[0] for ph in phases]) * np.where([ph[3] for ph in phases], amp_s, amp_p)[:, None]
    delay = np.array([ph[1] for ph in phases])
    tstar = np.array([ph[2] for ph in phases])
    family = np.array([ph[3] for ph in phases])

    fc = float(np.clip(10 ** (1.9 - 0.5 * magnitude), 0.5, 30.0))
    f = np.fft.rfftfreq(_NFFT, 1.0 / FS)
    source = _brune(f, fc)
    col = column_units(model, station)
    site = {
        0: site_response(f, col["h"], col["vp"], col["rho"], col["qp"], model.crust_vp, model.crust_rho),
        1: site_response(f, col["h"], col["vs"], col["rho"], col["qs"], model.crust_vs, model.crust_rho),
    }
    kernels = _phase_spectrum(f, delay, tstar) * source  # [n_phase, n_freq]
    traces = {}
    for fam in (0, 1):
        spec = zrt[family == fam].T @ kernels[family == fam] * site[fam]  # [3 (Z, R, T), n_freq]
        traces[fam] = np.fft.irfft(spec, _NFFT)[:, :T]
    t = np.arange(T) / FS
    for fam, onset, ts in ((0, tau_p, tstar_p), (1, tau_s, tstar_s)):
        band = np.abs(source * site[fam]) * np.exp(-np.pi * f * ts)
        scatter = np.fft.irfft(
            (rng.normal(size=(3, f.size)) + 1j * rng.normal(size=(3, f.size))) * band, _NFFT
        )[:, :T]
        lag = np.clip(t - onset, 0, None)
        envelope = (t > onset) * (1 - np.exp(-lag / 0.3)) * np.exp(-lag / rng.uniform(2.0, 8.0))
        coda = scatter / (scatter.std() + 1e-12) * envelope
        traces[fam] = traces[fam] + rng.uniform(0.02, 0.07) * np.abs(traces[fam]).max() * coda / (
            np.abs(coda).max() + 1e-12
        )
    zrt_signal = traces[0] + traces[1]
    hypo_km = np.hypot(depth, distance) / 1000.0
    zrt_signal *= 10.0**magnitude / hypo_km

    snr_db = rng.uniform(25.0, 45.0)
    noise = _coloured_noise(rng, f) * np.abs(zrt_signal).max() / 10 ** (snr_db / 20)
    b = np.deg2rad(baz)
    z_c, r_c, t_c = zrt_signal
    north = -r_c * np.cos(b) + t_c * np.sin(b)
    east = -r_c * np.sin(b) - t_c * np.cos(b)
    waveform = np.stack([z_c, north, east], axis=-1) + noise.T
    return {
        "waveform": waveform.astype(np.float32),
        "p_sample": np.int32(p_sample),
        "s_sample": np.int32(s_sample),
        "depth_km": np.float32(depth / 1000.0),
        "distance_km": np.float32(distance / 1000.0),
        "magnitude": np.float32(magnitude),
        "back_azimuth": np.float32(baz),
        "station_trace": np.int32(station),
        "snr_db": np.float32(snr_db),
    }


def generate_pair(seed: int, index: int = 0) -> dict[str, np.ndarray]:
    """Example `index` of the dataset `seed`: image, labels, waveform, picks and metadata.

    The earth model, the image and the waveform use independent child streams of one
    SeedSequence, so the same (seed, index) always gives the same pair on any machine.
    """
    model_seq, image_seq, wave_seq = np.random.SeedSequence([int(seed), int(index)]).spawn(3)
    model = draw_earth_model(np.random.default_rng(model_seq))
    out = render_image(model, np.random.default_rng(image_seq))
    out.update(render_waveform(model, np.random.default_rng(wave_seq)))
    out["n_layers"] = np.int32(model.n_layers)
    out["has_salt"] = np.int32(model.has_salt)
    return out


def plot_pairs(path: str, seed: int = 0, n: int = 4) -> None:
    """Figure of n generated pairs: image with the station, facies, and the 3-C seismogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        n, 3, figsize=(13, 3.1 * n), gridspec_kw={"width_ratios": [1, 1, 2.4]}, squeeze=False
    )
    for row in range(n):
        ex = generate_pair(seed, row)
        ax_img, ax_fac, ax_w = axes[row]
        ax_img.imshow(ex["image"][..., 0], cmap="gray", aspect="auto", vmin=-3, vmax=3)
        ax_img.axvline(int(ex["station_trace"]), color="tab:red", lw=1)
        domain = "time" if ex["time_domain"] else "depth"
        ax_img.set_title(f"image ({domain}, {float(ex['wavelet_hz']):.0f} Hz)", fontsize=9)
        ax_fac.imshow(
            ex["facies"], cmap="tab20", vmin=0, vmax=N_FACIES, aspect="auto", interpolation="nearest"
        )
        ax_fac.set_title(
            f"facies ({int(ex['n_layers'])} units{', salt' if ex['has_salt'] else ''})", fontsize=9
        )
        t = np.arange(T) / FS
        w = ex["waveform"] / (np.abs(ex["waveform"]).max(axis=0) + 1e-12)
        for c, name in enumerate("ZNE"):
            ax_w.plot(t, w[:, c] - 2.2 * c, lw=0.5, color="k")
            ax_w.text(-1.2, -2.2 * c, name, va="center", fontsize=8)
        ax_w.axvline(int(ex["p_sample"]) / FS, color="tab:blue", lw=1, label="P")
        ax_w.axvline(int(ex["s_sample"]) / FS, color="tab:red", lw=1, label="S")
        ax_w.set_yticks([])
        ax_w.set_xlim(-1.5, 30)
        ax_w.set_title(
            f"depth {float(ex['depth_km']):.1f} km, distance {float(ex['distance_km']):.1f} km, "
            f"M {float(ex['magnitude']):.1f}, SNR {float(ex['snr_db']):.0f} dB",
            fontsize=9,
        )
        if row == 0:
            ax_w.legend(loc="upper right", fontsize=8)
        for ax in (ax_img, ax_fac):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[-1, 2].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=64)
    plt.close(fig)
