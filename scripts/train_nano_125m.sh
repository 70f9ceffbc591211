#!/usr/bin/env bash
# Nano 125M (configs/models/nano_125m.toml): development and testing. GQA, mHC n = 2, MTP.
# 50K steps; TensorBoard, checkpoints every 5K steps, log file, GGUF + .mhc export at the end.
#   ./scripts/train_nano_125m.sh [nanochat train args...]     e.g. --steps 3 --set model.num_layers=2
# Environment: RUN_DIR (resume a run), DATA, TENSORBOARD=0, TB_PORT, NPROC, TORCHRUN_ARGS (scripts/README.md).
source "$(dirname "$0")/lib_train.sh"
train_run nano_125m configs/models/nano_125m.toml -- "$@"
