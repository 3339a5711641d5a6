"""Optional Weights & Biases mirror of `metrics.MetricWriter`: same `write(step, dict)` calls.

wandb is not a dependency: `from_config` returns None unless `config.wandb.enabled` is true, and
raises a ConfigError naming the key when it is true but `import wandb` fails. Config keys (all
optional): `wandb.enabled`, `wandb.project`, `wandb.entity`, `wandb.mode` (online | offline |
disabled), `wandb.group` (defaults to the workdir's name). One W&B run per stage, grouped by
workdir, so each stage keeps its own step axis.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax

from girl_jax.errors import ConfigError


def _finite_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out[k] = f
    return out


class WandbWriter:
    """Logs `stage/<key>` scalars against the stage's own step; text as a one-row table."""

    def __init__(
        self,
        wandb_module,
        stage: str,
        stage_dir: str,
        *,
        project: str = "girl_jax",
        entity: str | None = None,
        group: str | None = None,
        mode: str | None = None,
        config: dict | None = None,
    ):
        self.stage = stage
        self._wandb = wandb_module
        os.makedirs(stage_dir, exist_ok=True)
        self._run = wandb_module.init(
            project=project,
            entity=entity or None,
            group=group,
            name=stage,
            job_type=stage,
            dir=stage_dir,
            mode=mode,
            config=config or {},
        )

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        data = {f"{self.stage}/{k}": v for k, v in _finite_scalars(metrics).items()}
        if data:
            self._run.log(data, step=int(step))

    def text(self, step: int, tag: str, text: str) -> None:
        table = self._wandb.Table(columns=["step", "text"], data=[[int(step), text]])
        self._run.log({f"{self.stage}/{tag}": table}, step=int(step))

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def from_config(config, stage: str, workdir: str) -> WandbWriter | None:
    """A writer for `stage` when `config.wandb.enabled`, else None (no wandb import)."""
    opts = config.get("wandb") if hasattr(config, "get") else None
    if not opts or not opts.get("enabled", False) or jax.process_index() != 0:
        return None
    try:
        import wandb  # optional: wandb
    except ImportError as exc:
        raise ConfigError(
            "config.wandb.enabled is true but wandb is not installed "
            "(pip install wandb, or set --config.wandb.enabled=false)"
        ) from exc
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return WandbWriter(
        wandb,
        stage,
        os.path.join(workdir, stage),
        project=opts.get("project") or "girl_jax",
        entity=opts.get("entity"),
        group=opts.get("group") or os.path.basename(os.path.abspath(workdir)),
        mode=opts.get("mode") or None,
        config=as_dict,
    )
