"""Orbax checkpoints per stage, and the hand-off between stages.

Layout: `WORKDIR/<stage>/checkpoints/<step>/{state,extra}` (a step directory without Orbax's
commit marker, left by a kill mid-save, is never used), and `WORKDIR/<stage>/final.json`, the
marker that says the stage finished and which step the next stage starts from.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from girl_jax import atomic
from girl_jax.errors import CheckpointError


def write_json_atomic(path: str, obj: Any) -> None:
    """Write strict JSON atomically (`girl_jax.atomic`): never half-written.

    NaN / Inf become null so jq and JavaScript can read every file.
    """
    text = json.dumps(
        _finite(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False
    )
    atomic.write_text(path, text)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "dtype") and getattr(obj, "ndim", 1) == 0 and hasattr(obj, "item"):
        return _finite(obj.item())
    return obj


def _json_default(x):
    if hasattr(x, "tolist"):
        return x.tolist()
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def abstract_like(tree):
    """ShapeDtypeStructs (with the same shardings) for restoring onto a live tree's layout."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        tree,
    )


class StageCheckpointer:
    """A CheckpointManager for one stage: periodic saves, keep-last-K, resume, final marker."""

    def __init__(self, stage_dir: str, *, keep: int = 2):
        self.stage_dir = stage_dir
        self.directory = os.path.join(os.path.abspath(stage_dir), "checkpoints")
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def complete_steps(self) -> list[int]:
        """Steps whose save finished: Orbax's commit marker is written last (local disks)."""
        steps = self.manager.all_steps()
        if self.directory.startswith(("gs://", "s3://")):  # object stores commit by rename
            return sorted(steps)
        marker = lambda s: os.path.join(self.directory, str(s), "commit_success.txt")  # noqa: E731
        return sorted(s for s in steps if os.path.isfile(marker(s)))

    def latest_step(self) -> int | None:
        return max(self.complete_steps(), default=None)

    def save(self, step: int, state, extra: dict | None = None) -> None:
        if step in self.complete_steps():  # already saved (e.g. periodic save, then a stop)
            return
        if step in self.manager.all_steps():  # a save that a kill cut short: redo it
            shutil.rmtree(os.path.join(self.directory, str(step)), ignore_errors=True)
            self.manager.reload()
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), extra=ocp.args.JsonSave(extra or {})
        )
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()

    def restore(self, step: int, abstract_state, *, partial: bool = False):
        """(state, extra) of `step`. partial: `abstract_state` may be a subtree of the saved
        state (e.g. {"actor": {"params": ...}}): only that is read."""
        try:
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        abstract_state,
                        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state),
                        partial_restore=True,
                    )
                    if partial
                    else ocp.args.StandardRestore(abstract_state),
                    extra=ocp.args.JsonRestore(),
                ),
            )
        except Exception as exc:  # shape / structure mismatch, missing files
            raise CheckpointError(
                f"cannot restore {self.directory}/{step}: {type(exc).__name__}: {exc}"
            ) from exc
        return restored["state"], dict(restored["extra"] or {})

    def close(self) -> None:
        self.manager.close()

    # ---- the stage's final marker ----
    @property
    def final_path(self) -> str:
        return os.path.join(self.stage_dir, "final.json")

    def mark_final(self, step: int, info: dict | None = None) -> None:
        if jax.process_index() == 0:
            write_json_atomic(self.final_path, {"step": int(step), **(info or {})})


def read_final(stage_dir: str, stage: str, needed_by: str | None = None) -> dict:
    """The final marker of a finished stage, or a CheckpointError saying what to run first."""
    path = os.path.join(stage_dir, "final.json")
    if not os.path.isfile(path):
        who = f" (needed by {needed_by})" if needed_by else ""
        raise CheckpointError(
            f"stage {stage!r} has not finished: {path} is missing{who}; "
            f"run `girl {stage} --workdir ...` first (or `girl run`)"
        )
    with open(path) as f:
        return json.load(f)


def is_final(stage_dir: str) -> bool:
    return os.path.isfile(os.path.join(stage_dir, "final.json"))


def restore_final_state(
    stage_dir: str,
    stage: str,
    abstract_state,
    needed_by: str | None = None,
    *,
    partial: bool = False,
):
    """Restore the final checkpoint of a finished stage (the hand-off to the next stage);
    partial: only the subtree `abstract_state` names (StageCheckpointer.restore)."""
    final = read_final(stage_dir, stage, needed_by)
    ckpt = StageCheckpointer(stage_dir, keep=10**6)
    try:
        state, extra = ckpt.restore(final["step"], abstract_state, partial=partial)
    finally:
        ckpt.close()
    return state, extra, final
