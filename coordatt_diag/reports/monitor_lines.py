"""One line of text per part of a seed block's `extra["monitor"]` (`coordatt_diag.stats.monitor`).

Shared by the terminal, Markdown and HTML renderers; formatting only, nothing is computed.
"""

from __future__ import annotations

from typing import Any

from coordatt_diag.results import BlockReport

_BRANCHES = ("avg-pool", "max-pool")


def _num(v: Any, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _pct(v: Any) -> str:
    return "-" if v is None else f"{v:.1%}"


def part_line(p: dict[str, Any]) -> str:
    """The entries of one part, e.g. `alpha 0.750, alpha_eff 0.750, r_ema 1.000 (r_min 0.45...)`."""
    items: list[str] = []
    for key in ("alpha", "alpha_h", "alpha_w", "beta", "beta_ca"):
        if key in p:
            items.append(f"{key} {_num(p[key])}")
    if "T" in p:
        lo, hi = p.get("t_min"), p.get("t_max")
        bounds = f" in [{lo:g}, {hi:g}]" if lo is not None and hi is not None else ""
        raw = p.get("T_raw")
        before = f" (before the clamp {_num(raw)})" if raw is not None and raw != p["T"] else ""
        kind = "learnable " if p.get("learnable_temperature") else ""
        items.append(f"{kind}T {_num(p['T'])}{bounds}{before}")
    router = p.get("router")
    if router:
        names = _BRANCHES if len(router["mean"]) == 2 else tuple(
            f"#{i}" for i in range(len(router["mean"])))
        shares = " / ".join(f"{n} {_pct(m)}" for n, m in zip(names, router["mean"], strict=True))
        peaks = " / ".join(_pct(m) for m in router["max"])
        tr = p.get("router_temperature")
        items.append(f"router mean share {shares} (peak {peaks}"
                     + (f", Tr {tr:g})" if tr is not None else ")"))
    if "r_ema" in p:
        state = "on" if p.get("monitor") else "off"
        items.append(f"r_ema {_num(p['r_ema'])} (r_min {p.get('r_min', 0):g}, "
                     f"{p.get('rescue_mode')}, monitor {state}) -> alpha_eff {_num(p.get('alpha_eff'))}")
    clamp = p.get("scale_clamp")
    if clamp:
        items.append(f"scale at min {_pct(clamp['at_min'])} / at max {_pct(clamp['at_max'])} "
                     f"of [{p.get('scale_min')}, {p.get('scale_max')}]")
    elif "scale_min" in p:
        items.append(f"scale clamp [{p.get('scale_min')}, {p.get('scale_max')}]")
    heads = p.get("head_std")
    if heads:
        items.append("head std " + " ".join(f"{k} {_num(v, 4)}" for k, v in heads.items()))
    return ", ".join(items)


def monitor_lines(block: BlockReport) -> list[tuple[str, str]]:
    """(part, line) for each part of the block with monitor entries; part "" is the block."""
    parts = block.extra.get("monitor")
    if not isinstance(parts, dict):
        return []
    return [(part, part_line(p)) for part, p in parts.items()]
