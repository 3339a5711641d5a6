#!/usr/bin/env bash
# Create (or reuse) a Cloud TPU VM slice, install girl_jax on every worker, run `girl` on all.
#
#   TPU_NAME=girl-v5e ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-256 \
#   CONFIG=configs/llama2_7b_ppo.py WORKDIR=gs://my-bucket/girl/7b launch/tpu_pod.sh \
#     --config.sft.init_from=/path/llama-2-7b
#   DRY_RUN=1 TPU_NAME=x ZONE=z WORKDIR=gs://b/w CONFIG=configs/llama2_7b_ppo.py launch/tpu_pod.sh
#
# Every worker runs the same command; jax.distributed finds its peers from the TPU VM
# metadata, so no coordinator address is needed. Extra arguments go to `girl`. CONFIG is a
# path inside this checkout (copied to every worker), relative to its root.
#
# Environment (required: TPU_NAME, ZONE, WORKDIR; defaults in brackets):
#   PROJECT            gcloud project                 [gcloud's default]
#   ACCELERATOR_TYPE   slice type to create           [v5litepod-16]
#   RUNTIME_VERSION    TPU VM image                   [v2-alpha-tpuv5-lite]
#   SPOT               1 = create a spot slice        [0]
#   CONFIG             config spec path[:variant]     [configs/default.py]
#   COMMAND            girl sub-command               [run]
#   REPO_DIR           checkout path on the workers   [~/girl_jax]
#   PIP_SPEC           what pip installs there        [.[tpu]]
#   SKIP_CREATE        1 = never create, only reuse   [0]
#   SKIP_INSTALL       1 = skip copying / installing  [0]
#   DRY_RUN            1 = print every command (`+ ...`, shell-quoted) instead of running it;
#                      needs no gcloud, assumes the slice does not exist yet [0]
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME (name of the TPU VM slice)}"
: "${ZONE:?set ZONE (e.g. us-west4-a)}"
: "${WORKDIR:?set WORKDIR (a gs:// path every worker can write)}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5litepod-16}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
SPOT="${SPOT:-0}"
CONFIG="${CONFIG:-configs/default.py}"
COMMAND="${COMMAND:-run}"
REPO_DIR="${REPO_DIR:-girl_jax}"
PIP_SPEC="${PIP_SPEC:-.[tpu]}"
SKIP_CREATE="${SKIP_CREATE:-0}"
SKIP_INSTALL="${SKIP_INSTALL:-0}"
DRY_RUN="${DRY_RUN:-0}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ "${CONFIG}" == /* || ! -f "${ROOT}/${CONFIG%%:*}" ]]; then
  echo "tpu_pod.sh: config file ${CONFIG%%:*} is not a file of this checkout (CONFIG=${CONFIG});" \
    "give its path relative to ${ROOT}" >&2
  exit 2
fi

# run CMD...: run it, or print it under DRY_RUN=1.
run() {
  if [[ "${DRY_RUN}" == "1" ]]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

if [[ "${DRY_RUN}" != "1" ]]; then
  command -v gcloud >/dev/null || { echo "tpu_pod.sh: gcloud is not installed" >&2; exit 2; }
fi

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone "${ZONE}")
if [[ -n "${PROJECT:-}" ]]; then where+=(--project "${PROJECT}"); fi

if [[ "${DRY_RUN}" != "1" ]] && "${gcloud_tpu[@]}" describe "${TPU_NAME}" "${where[@]}" >/dev/null 2>&1; then
  echo "tpu_pod.sh: reusing ${TPU_NAME}"
elif [[ "${SKIP_CREATE}" == "1" ]]; then
  if [[ "${DRY_RUN}" != "1" ]]; then
    echo "tpu_pod.sh: ${TPU_NAME} does not exist and SKIP_CREATE=1" >&2
    exit 2
  fi
else
  create=(--accelerator-type "${ACCELERATOR_TYPE}" --version "${RUNTIME_VERSION}")
  if [[ "${SPOT}" == "1" ]]; then create+=(--spot); fi
  echo "tpu_pod.sh: creating ${TPU_NAME} (${ACCELERATOR_TYPE})"
  run "${gcloud_tpu[@]}" create "${TPU_NAME}" "${where[@]}" "${create[@]}"
fi

on_all() {
  run "${gcloud_tpu[@]}" ssh "${TPU_NAME}" "${where[@]}" --worker=all --command "$1"
}

repo_q="$(printf '%q' "${REPO_DIR}")"
if [[ "${SKIP_INSTALL}" != "1" ]]; then
  archive="$(mktemp -t girl_jax.XXXXXX.tar.gz)"
  trap 'rm -f "${archive}"' EXIT
  run tar -C "${ROOT}" --exclude=.venv --exclude=.git --exclude=workdir -czf "${archive}" .
  run "${gcloud_tpu[@]}" scp "${archive}" "${TPU_NAME}:girl_jax.tar.gz" "${where[@]}" --worker=all
  on_all "mkdir -p ${repo_q} && tar -xzf girl_jax.tar.gz -C ${repo_q} \
&& cd ${repo_q} && python3 -m pip install -q -U pip \
&& python3 -m pip install -q -e $(printf '%q' "${PIP_SPEC}")"
fi

girl=(python3 -m girl_jax.cli "${COMMAND}" --config "${CONFIG}" --workdir "${WORKDIR}" "$@")
on_all "cd ${repo_q} && export TPU_NAME=$(printf '%q' "${TPU_NAME}") JAX_PLATFORMS=tpu \
&& $(printf '%q ' "${girl[@]}")"
