#!/usr/bin/env bash
# Run `girl` on this machine. Extra arguments go to `girl run`.
#
#   CONFIG=configs/default.py:smoke WORKDIR=/tmp/girl launch/local.sh
#   CONFIG=configs/llama2_7b_ppo.py:smoke launch/local.sh      # a scale config's CPU variant
#   CPU_DEVICES=8 launch/local.sh --config.mesh.fsdp=-1         # 8 simulated CPU devices
#   DRY_RUN=1 CONFIG=configs/gpt2_xl_ppo.py launch/local.sh     # print the command only
#
# Environment (defaults in brackets):
#   CONFIG       config spec path[:variant]          [configs/default.py]
#   WORKDIR      output directory                    [workdir/local]
#   COMMAND      girl sub-command                    [run]
#   CPU_DEVICES  simulate N CPU devices (0 = off)    [0]
#   PYTHON       interpreter with girl_jax installed [python3, or .venv/bin/python if present]
#   DRY_RUN      1 = print the command (`+ ...`, shell-quoted) instead of running it [0]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="${CONFIG:-configs/default.py}"
WORKDIR="${WORKDIR:-workdir/local}"
COMMAND="${COMMAND:-run}"
CPU_DEVICES="${CPU_DEVICES:-0}"
DRY_RUN="${DRY_RUN:-0}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "${ROOT}/.venv/bin/python" ]]; then PYTHON="${ROOT}/.venv/bin/python"; else PYTHON=python3; fi
fi

cd "${ROOT}"
if [[ ! -f "${CONFIG%%:*}" ]]; then
  echo "local.sh: config file ${CONFIG%%:*} does not exist (CONFIG=${CONFIG})" >&2
  exit 2
fi

if [[ "${CPU_DEVICES}" != "0" ]]; then
  export JAX_PLATFORMS=cpu
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${CPU_DEVICES}"
fi

cmd=("${PYTHON}" -m girl_jax.cli "${COMMAND}" --config "${CONFIG}" --workdir "${WORKDIR}" "$@")
if [[ "${DRY_RUN}" == "1" ]]; then
  if [[ "${CPU_DEVICES}" != "0" ]]; then
    printf '+ export JAX_PLATFORMS=cpu XLA_FLAGS=%q\n' "${XLA_FLAGS}"
  fi
  printf '+'; printf ' %q' "${cmd[@]}"; printf '\n'
  exit 0
fi
exec "${cmd[@]}"
