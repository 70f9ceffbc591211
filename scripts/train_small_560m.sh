#!/usr/bin/env bash
# Small 560M (configs/models/small_560m.toml): production code generation. Hybrid attention
# (20% Gated DeltaNet), mHC n = 2, MTP, gradient checkpointing. 100K steps; TensorBoard,
# checkpoints every 10K steps, log file, GGUF + .mhc export at the end.
#   ./scripts/train_small_560m.sh [nanochat train args...]
# Environment: RUN_DIR (resume a run), DATA, TENSORBOARD=0, TB_PORT, NPROC, TORCHRUN_ARGS (scripts/README.md).
source "$(dirname "$0")/lib_train.sh"
train_run small_560m configs/models/small_560m.toml -- "$@"
