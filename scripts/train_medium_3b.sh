#!/usr/bin/env bash
# Medium 3B MoE (configs/models/medium_3b.toml): 8 experts (2 active), hybrid attention (30%
# Gated DeltaNet), mHC n = 4, 8-bit optimizer states, gradient checkpointing. 200K steps;
# TensorBoard, checkpoints every 10K steps, log file, GGUF + .mhc export at the end.
#   ./scripts/train_medium_3b.sh [nanochat train args...]
# Environment: RUN_DIR (resume a run), DATA, TENSORBOARD=0, TB_PORT, NPROC, TORCHRUN_ARGS (scripts/README.md).
source "$(dirname "$0")/lib_train.sh"
train_run medium_3b configs/models/medium_3b.toml -- "$@"
