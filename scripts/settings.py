"""The report's options (``conf/report.yaml``): equivalence margins, test level, bootstrap, plots, W&B."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .stats import Margin

DEFAULT_SETTINGS = Path(__file__).resolve().parents[1] / "conf" / "report.yaml"
WANDB_MODES = ("online", "offline", "disabled")
_KEYS = ("margins", "alpha", "confidence", "bootstrap", "baseline", "plots", "wandb")


@dataclass(frozen=True)
class Settings:
    margins: dict[str, Margin] = field(default_factory=dict)
    alpha: float = 0.05
    confidence: float = 0.95
    bootstrap_resamples: int = 10_000
    bootstrap_seed: int = 0
    baseline: str = "baseline"
    dpi: int = 120
    wandb_mode: str | None = None  # None: follow WANDB_MODE
    wandb_project: str = "pmdrop"
    wandb_entity: str | None = None

    def __post_init__(self) -> None:
        for name in ("alpha", "confidence"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"report setting {name}={getattr(self, name)!r} must lie strictly between 0 and 1")
        if self.wandb_mode is not None and self.wandb_mode not in WANDB_MODES:
            raise ValueError(f"report setting wandb.mode={self.wandb_mode!r} is not valid; valid: null, "
                             f"{', '.join(WANDB_MODES)}")

    def margin(self, metric: str) -> Margin | None:
        return self.margins.get(metric)


def load_settings(path: Path = DEFAULT_SETTINGS) -> Settings:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown report setting(s) {unknown}; valid: {', '.join(_KEYS)}")
    margins = {}
    for metric, spec in (raw.get("margins") or {}).items():
        if not isinstance(spec, dict) or set(spec) != {"kind", "value"}:
            raise ValueError(f"{path}: margin for {metric!r} must be {{kind: absolute|relative, value: number}}, "
                             f"got {spec!r}")
        margins[metric] = Margin(spec["kind"], float(spec["value"]))
    bootstrap, plots, wandb = raw.get("bootstrap") or {}, raw.get("plots") or {}, raw.get("wandb") or {}
    default = Settings()  # a key the file leaves out keeps the dataclass's value: the defaults live there alone
    return Settings(
        margins=margins,
        alpha=float(raw.get("alpha", default.alpha)),
        confidence=float(raw.get("confidence", default.confidence)),
        bootstrap_resamples=int(bootstrap.get("resamples", default.bootstrap_resamples)),
        bootstrap_seed=int(bootstrap.get("seed", default.bootstrap_seed)),
        baseline=str(raw.get("baseline", default.baseline)),
        dpi=int(plots.get("dpi", default.dpi)),
        wandb_mode=wandb.get("mode", default.wandb_mode),
        wandb_project=str(wandb.get("project", default.wandb_project)),
        wandb_entity=wandb.get("entity", default.wandb_entity),
    )
