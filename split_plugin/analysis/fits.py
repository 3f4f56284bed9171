"""The paper's functional forms for log-odds vs multiplier, fitted with scipy, and the phases.

Validity of a shifted representation decays with its distance from the manifold:

    D(m) = [1 + (m - m0)^2 / L]^(-p)        separate (m0, L, p) for m >= 0 and for m < 0
    logit P_pref(m) = (alpha * m + beta) * D_p(m) + b       (the preference log-odds, PrefOdds)
    logit P_util(m) = beta_u * D_u(m) + b_u                 (the utility log-odds, UtilOdds)

The curves are fitted to the per-multiplier MEAN PrefOdds and the mean UtilOdds over the pairs
where it is defined (multipliers where it is undefined for every pair are left out). Every
start solves the linear parameters (alpha, beta, b / beta_u, b_u) exactly by least squares
given its (m0, L, p), then `curve_fit` refines all of them; the best of several starts is kept.
A fit is flagged (never hidden) when it failed, when R^2 < 0.9 (overall or on one branch),
or when it has no more points than parameters.

Phases of the fitted preference curve, on each side of 0, from its slope along |m| relative
to its slope at 0 on that side: linear while the ratio >= 0.7, transition below that, and
convergence once the ratio <= 0.15 (saturated, or turning back).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from ..errors import SplitPluginError

R2_THRESHOLD = 0.9
LINEAR_RATIO = 0.7
CONVERGED_RATIO = 0.15
BRANCHES = ("positive", "negative")
_LINEAR = {"preference": ("alpha", "beta", "b"), "utility": ("beta", "b")}


def decay(m: np.ndarray, m0: float, L: float, p: float) -> np.ndarray:
    """D(m) = [1 + (m - m0)^2 / L]^(-p): 1 on the manifold, falling off with distance."""
    return (1.0 + (np.asarray(m, dtype=np.float64) - m0) ** 2 / L) ** (-p)


def _branch_params(params: dict, branch: str) -> tuple[float, float, float]:
    """(m0, L, p) of one branch; a branch without data borrows the other's."""
    if f"m0_{branch}" not in params:
        branch = "positive" if branch == "negative" else "negative"
    return params[f"m0_{branch}"], params[f"L_{branch}"], params[f"p_{branch}"]


def evaluate(kind: str, params: dict, m: np.ndarray) -> np.ndarray:
    """The fitted log-odds curve `kind` ("preference" / "utility") at multipliers m."""
    m = np.asarray(m, dtype=np.float64)
    d = np.where(m >= 0, decay(m, *_branch_params(params, "positive")),
                 decay(m, *_branch_params(params, "negative")))
    if kind == "preference":
        return (params["alpha"] * m + params["beta"]) * d + params["b"]
    return params["beta"] * d + params["b"]


@dataclass
class CurveFit:
    """One fitted curve: parameters, goodness of fit and every problem found with it."""

    kind: str
    params: dict[str, float]
    r2: float
    r2_branch: dict[str, float]
    n_points: int
    n_params: int
    converged: bool
    flags: list[str] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.flags

    def predict(self, m: Sequence[float] | np.ndarray) -> np.ndarray:
        """The fitted curve at m (NaN everywhere when the fit failed)."""
        if not self.params:
            return np.full(np.shape(m), np.nan)
        return evaluate(self.kind, self.params, np.asarray(m, dtype=np.float64))


@dataclass
class FitResult:
    """Both fitted curves and the preference phases (multiplier ranges per side)."""

    preference: CurveFit
    utility: CurveFit
    phases: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.preference.ok and self.utility.ok

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FitResult":
        return cls(preference=CurveFit(**data["preference"]), utility=CurveFit(**data["utility"]),
                   phases=data.get("phases", {}))


# -- fitting ---------------------------------------------------------------------------------
def _nonlinear_names(branches: Sequence[str]) -> list[str]:
    return [f"{name}_{b}" for b in branches for name in ("m0", "L", "p")]


def _design(kind: str, m: np.ndarray, nonlinear: dict) -> np.ndarray:
    """Columns multiplying the linear parameters, for fixed (m0, L, p) per branch."""
    d = evaluate("utility", {**nonlinear, "beta": 1.0, "b": 0.0}, m)
    cols = [m * d, d, np.ones_like(m)] if kind == "preference" else [d, np.ones_like(m)]
    return np.stack(cols, axis=1)


def _starts(span: float, branches: Sequence[str], restarts: int, seed: int) -> list[dict]:
    """(m0, L, p) starting points: a fixed grid, then random draws."""
    rng = np.random.default_rng(seed)
    grid = [(0.0, span ** 2 * s, p) for s in (0.05, 0.5, 5.0) for p in (0.5, 1.0, 2.0)]
    draws = [(rng.uniform(-0.5, 0.5) * span, span ** 2 * 10 ** rng.uniform(-2, 2),
              10 ** rng.uniform(-1, 0.7)) for _ in range(restarts)]
    return [{f"{n}_{b}": v for b in branches for n, v in zip(("m0", "L", "p"), start)}
            for start in grid + draws]


def _bounds(names: list[str], span: float) -> tuple[list[float], list[float]]:
    """m0 within the swept range, L > 0, p > 0; linear parameters free."""
    limits = {"m0": (-span, span), "L": (1e-6 * span ** 2, 1e4 * span ** 2), "p": (1e-3, 20.0)}
    low, high = [], []
    for name in names:
        lo, hi = limits.get(name.split("_")[0], (-np.inf, np.inf))
        low.append(lo)
        high.append(hi)
    return low, high


def _jacobian(kind: str, params: dict, m: np.ndarray, names: list[str]) -> np.ndarray:
    """d curve / d parameter ([points, params]), analytic: 5-10x faster than finite differences."""
    cols = {}
    for branch, on in (("positive", m >= 0), ("negative", m < 0)):
        if f"m0_{branch}" not in params:
            continue
        m0, L, p = params[f"m0_{branch}"], params[f"L_{branch}"], params[f"p_{branch}"]
        u = (m - m0) ** 2 / L
        d, base = (1 + u) ** (-p), p * (1 + u) ** (-p - 1)
        cols[f"m0_{branch}"] = np.where(on, base * 2 * (m - m0) / L, 0.0)
        cols[f"L_{branch}"] = np.where(on, base * u / L, 0.0)
        cols[f"p_{branch}"] = np.where(on, -np.log1p(u) * d, 0.0)
    d = evaluate("utility", {**params, "beta": 1.0, "b": 0.0}, m)
    outer = params["alpha"] * m + params["beta"] if kind == "preference" else params["beta"]
    cols = {k: outer * v for k, v in cols.items()}
    cols.update({"beta": d, "b": np.ones_like(m)})
    if kind == "preference":
        cols["alpha"] = m * d
    return np.stack([cols[n] for n in names], axis=1)


def _one_start(kind: str, m: np.ndarray, y: np.ndarray, start: dict, names: list[str],
               bounds) -> tuple[float, np.ndarray] | None:
    """Least-squares linear init for this (m0, L, p), then curve_fit; (SSE, params) or None."""
    linear = np.linalg.lstsq(_design(kind, m, start), y, rcond=None)[0]
    p0 = np.array([*linear, *(start[n] for n in names[len(linear):])])
    p0 = np.clip(p0, np.array(bounds[0]) + 1e-12, np.array(bounds[1]) - 1e-12)

    def model(x, *theta):
        return evaluate(kind, dict(zip(names, theta)), x)

    def jac(x, *theta):
        return _jacobian(kind, dict(zip(names, theta)), x, names)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (OptimizeWarning, RuntimeWarning))
            theta, _ = curve_fit(model, m, y, p0=p0, bounds=bounds, jac=jac, maxfev=500)
    except (RuntimeError, ValueError, np.linalg.LinAlgError):
        return None
    sse = float(np.sum((model(m, *theta) - y) ** 2))
    return (sse, theta) if np.isfinite(sse) else None


def _r2(y: np.ndarray, fitted: np.ndarray) -> float:
    """1 - SSE / SST; NaN with fewer than 2 points or constant data."""
    if y.size < 2:
        return float("nan")
    sst = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - fitted) ** 2)) / sst if sst > 0 else float("nan")


def fit_curve(kind: str, multipliers: Sequence[float], values: Sequence[float], restarts: int = 8,
              seed: int = 0) -> CurveFit:
    """Fit one of the paper's curves ("preference" or "utility"); bad fits come back flagged."""
    if kind not in _LINEAR:
        raise SplitPluginError(f"kind must be 'preference' or 'utility', got {kind!r}")
    m, y = np.asarray(multipliers, np.float64), np.asarray(values, np.float64)
    keep = np.isfinite(m) & np.isfinite(y)
    m, y = m[keep], y[keep]
    branches = [b for b, has in zip(BRANCHES, ((m >= 0).any(), (m < 0).any())) if has]
    names = [*_LINEAR[kind], *_nonlinear_names(branches)]
    empty = CurveFit(kind, {}, float("nan"), {}, int(m.size), len(names), False,
                     multipliers=m.tolist(), values=y.tolist())
    if m.size < 2:
        empty.flags.append(f"fit failed: only {m.size} usable point(s)")
        return empty
    span = float(np.max(np.abs(m))) or 1.0
    bounds = _bounds(names, span)
    tries = [_one_start(kind, m, y, s, names, bounds) for s in _starts(span, branches, restarts, seed)]
    tries = [t for t in tries if t is not None]
    if not tries:
        empty.flags.append("fit failed: curve_fit did not converge from any start")
        return empty
    params = {n: float(v) for n, v in zip(names, min(tries, key=lambda t: t[0])[1])}
    fit = CurveFit(kind, params, 0.0, {}, int(m.size), len(names), True,
                   multipliers=m.tolist(), values=y.tolist())
    fitted = fit.predict(m)
    fit.r2 = _r2(y, fitted)
    fit.r2_branch = {b: _r2(y[sel], fitted[sel]) for b, sel in
                     zip(BRANCHES, (m >= 0, m < 0)) if sel.any()}
    fit.flags = _flags(fit)
    return fit


def _flags(fit: CurveFit) -> list[str]:
    """Everything that makes a fit untrustworthy, in words."""
    flags = []
    if fit.n_points <= fit.n_params:
        flags.append(f"underdetermined: {fit.n_points} points for {fit.n_params} parameters "
                     "(sweep more multipliers)")
    if not np.isfinite(fit.r2):
        flags.append("R^2 undefined (constant data)")
    elif fit.r2 < R2_THRESHOLD:
        flags.append(f"R^2 = {fit.r2:.3f} < {R2_THRESHOLD}")
    for branch, r2 in fit.r2_branch.items():
        if np.isfinite(r2) and r2 < R2_THRESHOLD:
            flags.append(f"{branch} branch R^2 = {r2:.3f} < {R2_THRESHOLD}")
    return flags


def fit_curves(multipliers: Sequence[float], pref_mean: Sequence[float], util_mean: Sequence[float],
               restarts: int = 8, seed: int = 0) -> FitResult:
    """Fit both curves to per-multiplier means and find the preference phases."""
    pref = fit_curve("preference", multipliers, pref_mean, restarts, seed)
    util = fit_curve("utility", multipliers, util_mean, restarts, seed)
    m = np.asarray(multipliers, np.float64)
    phases = detect_phases(pref.predict, float(m.max()), float(m.min())) if pref.params else {}
    return FitResult(preference=pref, utility=util, phases=phases)


# -- phases ----------------------------------------------------------------------------------
def _side_phases(curve: Callable, edge: float, linear: float, converged: float,
                 points: int) -> dict | None:
    """Phase ranges from 0 to `edge` (either sign) from the slope ratio along |m|."""
    if edge == 0:
        return None
    sign = 1.0 if edge > 0 else -1.0
    grid = sign * np.linspace(0.0, abs(edge), points)
    grid[0] = sign * 1e-9 * abs(edge)  # stay on this side's branch
    slope = sign * np.gradient(np.asarray(curve(grid), np.float64), grid)
    if not np.isfinite(slope).all() or abs(slope[0]) <= 1e-12 * (1 + np.abs(slope).max()):
        return {"slope_at_0": float(slope[0]), "linear": None, "transition": None,
                "convergence": None, "note": "flat at m = 0: no phases"}
    ratio = slope / slope[0]
    end_linear = _first(ratio < linear, points)
    start_convergence = max(end_linear, _first(ratio <= converged, points))
    cuts = [float(grid[i]) if i < points else float(edge) for i in (end_linear, start_convergence)]
    bounds = [0.0, *cuts, float(edge)]
    out = {"slope_at_0": float(sign * slope[0])}
    for name, low, high in zip(("linear", "transition", "convergence"), bounds, bounds[1:]):
        out[name] = tuple(sorted((low, high))) if low != high else None
    return out


def _first(mask: np.ndarray, default: int) -> int:
    """Index of the first True, or `default`."""
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else default


def detect_phases(curve: Callable, m_max: float, m_min: float, linear: float = LINEAR_RATIO,
                  converged: float = CONVERGED_RATIO, points: int = 2001) -> dict:
    """{"positive": {...}, "negative": {...}}: linear / transition / convergence (lo, hi) ranges.

    On each side the slope along |m| is compared with its value at 0: linear while the ratio
    >= `linear`, convergence from where it first drops to <= `converged`, transition between.
    A phase not reached within the swept range is None. `slope_at_0` is df/dm at 0 on that side.
    """
    out = {}
    for branch, edge in (("positive", m_max), ("negative", m_min)):
        if (edge > 0) == (branch == "positive") and edge != 0:
            out[branch] = _side_phases(curve, edge, linear, converged, points)
    return out
