# Shared body of the four training scripts (train_nano_125m.sh, train_small_560m.sh,
# train_medium_3b.sh, train_production_8h.sh); sourced, not run. scripts/README.md documents it.
#
#   train_run NAME CONFIG [SCRIPT ARGS...] -- [USER ARGS...]
#
# SCRIPT ARGS are the script's own `nanochat train` options; USER ARGS come after them, so a
# user's `--set key=value` or `--steps N` wins. It
#   1. makes the run folder runs/<NAME>_<timestamp>/ (or uses RUN_DIR; a RUN_DIR holding a
#      checkpoint is resumed with --resume),
#   2. starts TensorBoard on port 6006 or the next free one (TB_PORT, TB_HOST; TENSORBOARD=0:
#      off), waits until it answers and prints its URL, and stops it when the script ends,
#      however it ends (success, failure, Ctrl-C),
#   3. trains, appending everything printed to <run>/train.log; with more than one GPU visible
#      (or NPROC=N) under torchrun (TORCHRUN_ARGS replaces the one-node default --standalone),
#   4. exports <run>/model.gguf and <run>/model.mhc from the last checkpoint.
# Environment: VENV (default .venv; created when missing), DATA (default synthetic).

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
TB_PID=""

_log() { echo "[$(date +%H:%M:%S)] $*"; }

_setup_venv() {
  if [ ! -x "$PY" ]; then
    _log "creating $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet -e .
  fi
}

_stop_tensorboard() {
  if [ -n "$TB_PID" ]; then
    kill "$TB_PID" 2>/dev/null || true
    wait "$TB_PID" 2>/dev/null || true
    _log "TensorBoard stopped"
    TB_PID=""
  fi
}

_port_answers() {  # _port_answers HOST PORT: exit 0 when something accepts a connection there
  "$PY" -c "import socket, sys; s = socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('$1', $2)))"
}

_free_port() {  # _free_port HOST FIRST: FIRST or the next port nobody listens on
  "$PY" - "$1" "$2" <<'EOF'
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
for p in range(port, port + 100):
    with socket.socket() as s:
        try:
            s.bind((host, p))
        except OSError:
            continue
        print(p)
        break
else:
    sys.exit(f"no free port in {port}..{port + 99}")
EOF
}

_start_tensorboard() {  # _start_tensorboard LOGDIR
  [ "${TENSORBOARD:-1}" = "0" ] && { _log "TensorBoard off (TENSORBOARD=0)"; return 0; }
  local host=${TB_HOST:-127.0.0.1} port
  port=$(_free_port "$host" "${TB_PORT:-6006}")
  mkdir -p "$1"
  "$PY" -m tensorboard.main --logdir "$1" --host "$host" --port "$port" >>"$RUN_DIR/tensorboard.log" 2>&1 &
  TB_PID=$!
  local i
  for i in $(seq 1 "${TB_WAIT:-60}"); do
    if _port_answers "$host" "$port"; then
      _log "TensorBoard: http://$([ "$host" = 127.0.0.1 ] && echo localhost || echo "$host"):$port (pid $TB_PID; log $RUN_DIR/tensorboard.log)"
      return 0
    fi
    kill -0 "$TB_PID" 2>/dev/null || break
    sleep 1
  done
  _log "warning: TensorBoard did not answer on port $port (see $RUN_DIR/tensorboard.log); training anyway"
}

_gpu_count() {
  if [ -n "${NPROC:-}" ]; then echo "$NPROC"; return; fi
  "$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
}

train_run() {
  local name=$1 config=$2; shift 2
  local -a script_args=() user_args=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do script_args+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  user_args=("$@")

  _setup_venv
  RUN_DIR=${RUN_DIR:-runs/${name}_$(date +%Y%m%d_%H%M%S)}
  mkdir -p "$RUN_DIR"
  local log="$RUN_DIR/train.log"
  # everything below also goes to the log file; tee ignores Ctrl-C so that the last lines still get out
  exec > >(trap '' INT; exec tee -a "$log") 2>&1
  trap _stop_tensorboard EXIT
  trap 'echo; _log "interrupted"; exit 130' INT TERM

  local -a resume=()
  if [ -e "$RUN_DIR/checkpoints/latest" ]; then
    resume=(--resume)
    _log "resuming $RUN_DIR from $(cat "$RUN_DIR/checkpoints/latest")"
  fi
  _log "run $name: config $config, run dir $RUN_DIR, log $log"
  _start_tensorboard "$RUN_DIR/tensorboard"

  local nproc launcher
  nproc=$(_gpu_count)
  if [ "$nproc" -gt 1 ]; then
    # shellcheck disable=SC2206  # TORCHRUN_ARGS is a list of flags by design
    launcher=("$PY" -m torch.distributed.run ${TORCHRUN_ARGS:---standalone} --nproc_per_node "$nproc" -m nanochat_ternary.cli)
    _log "data-parallel on $nproc GPUs: ${launcher[*]}"
  else
    launcher=("$PY" -m nanochat_ternary.cli)
  fi
  local rc=0
  "${launcher[@]}" train --config "$config" --data "${DATA:-synthetic}" --run-dir "$RUN_DIR" \
    "${resume[@]}" "${script_args[@]}" "${user_args[@]}" || rc=$?
  # Ctrl-C: the trainer saved a checkpoint and exited 130. Said here, not only in the INT trap:
  # whether bash runs its trap before `set -e` acts on the child's status is a race.
  if [ "$rc" -eq 130 ]; then echo; _log "interrupted; rerun with RUN_DIR=$RUN_DIR to resume"; exit 130; fi
  [ "$rc" -eq 0 ] || exit "$rc"

  _log "exporting $RUN_DIR/model.gguf + model.mhc"
  "$PY" -m nanochat_ternary.cli export --checkpoint "$RUN_DIR" --output "$RUN_DIR/model.gguf" --mhc-output "$RUN_DIR/model.mhc"
  _log "done: $RUN_DIR/model.gguf ($RUN_DIR/model.mhc); serve it with"
  _log "  nanochat serve --model $RUN_DIR/model.gguf --mhc $RUN_DIR/model.mhc --port 8000"
}
