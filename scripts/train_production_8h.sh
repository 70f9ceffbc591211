#!/usr/bin/env bash
# Production run: the small 560M config with its full feature set (hybrid attention, mHC n = 2,
# MTP, entropy term, WSD, async loader, gradient checkpointing) on a wall-clock budget of
# 8 hours (training.max_hours: the learning rate decays in time and the run stops and
# checkpoints at the budget). total_steps is only an upper bound here; checkpoints every 10,000
# steps, logs every 100. TensorBoard, log file, GGUF + .mhc export at the end.
#   ./scripts/train_production_8h.sh [nanochat train args...]    e.g. --set training.max_hours=4
# Environment: RUN_DIR (resume a run), DATA, TENSORBOARD=0, TB_PORT, NPROC, TORCHRUN_ARGS (scripts/README.md).
source "$(dirname "$0")/lib_train.sh"
train_run production_8h configs/models/small_560m.toml \
  --set training.max_hours=8 --set training.total_steps=1000000 \
  --set training.checkpoint_interval=10000 --set training.log_interval=100 \
  -- "$@"
