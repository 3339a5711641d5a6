"""Metrics: AUC / LogLoss / ECE, metric writers (JSONL + TensorBoard), progress display."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import numpy as np
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from sklearn import metrics as skm

from girl_jax import atomic


def auc(labels, scores) -> float:
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        return float("nan")
    return float(skm.roc_auc_score(labels, np.asarray(scores, np.float64)))


def logloss(labels, probs) -> float:
    probs = np.clip(np.asarray(probs, np.float64), 1e-7, 1 - 1e-7)
    return float(skm.log_loss(np.asarray(labels), probs, labels=[0, 1]))


def accuracy(labels, probs, threshold: float = 0.5) -> float:
    return float(np.mean((np.asarray(probs) >= threshold) == (np.asarray(labels) == 1)))


def ece(labels, probs, bins: int = 10) -> float:
    """Expected calibration error with equal-width bins."""
    labels = np.asarray(labels, np.float64)
    probs = np.asarray(probs, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            total += sel.mean() * abs(probs[sel].mean() - labels[sel].mean())
    return float(total)


def binary_report(labels, logits) -> dict[str, float]:
    probs = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
    return dict(
        auc=auc(labels, logits),
        accuracy=accuracy(labels, probs),
        logloss=logloss(labels, probs),
        ece=ece(labels, probs),
    )


def _scalar(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


class MetricWriter:
    """Appends one JSON object per logged step to metrics.jsonl and mirrors it to TensorBoard.

    Only process 0 writes. On resume, lines from steps after the restored step are dropped so a
    resumed run's log equals an uninterrupted one.
    """

    def __init__(
        self,
        stage_dir: str,
        *,
        resume_step: int | None = None,
        enabled: bool = True,
        mirror=None,
    ):
        self.enabled = enabled
        self.mirror = mirror  # e.g. wandb_writer.WandbWriter: same write / text / close
        self.path = os.path.join(stage_dir, "metrics.jsonl")
        self._tb = None
        if not enabled:
            return
        os.makedirs(stage_dir, exist_ok=True)
        self._truncate_after(resume_step)
        from tensorboardX import SummaryWriter  # optional: tensorboardX (no TensorFlow needed)

        self._tb = SummaryWriter(os.path.join(stage_dir, "tensorboard"), flush_secs=10)

    def _truncate_after(self, step: int | None) -> None:
        if not os.path.exists(self.path):
            return
        keep = []
        with open(self.path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if step is not None and rec.get("step", 0) <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
        atomic.write_text(self.path, "".join(keep))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        rec = {"step": int(step)}
        for k, v in metrics.items():
            f = _scalar(v)
            rec[k] = f if f is None or math.isfinite(f) else str(f)
            if f is not None and math.isfinite(f):
                self._tb.add_scalar(k, f, int(step))
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if self.mirror is not None:
            self.mirror.write(step, metrics)

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            self._tb.add_text(tag, text, int(step))
            if self.mirror is not None:
                self.mirror.text(step, tag, text)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self.mirror is not None:
            self.mirror.close()


def read_metrics(stage_dir: str) -> list[dict]:
    path = os.path.join(stage_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


class Progress:
    """A progress bar with ETA (rich), quiet when not a terminal unless forced."""

    def __init__(self, total: int, description: str, *, start: int = 0, enabled: bool = True):
        self.total, self.description = total, description
        self._t0, self._n0 = time.time(), start
        self._bar = None
        if enabled:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                transient=False,
            )
            self._task = self._bar.add_task(description, total=total, completed=start, info="")
            self._bar.start()

    def update(self, completed: int, info: str = "") -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, info=info)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
