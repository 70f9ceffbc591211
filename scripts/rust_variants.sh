#!/usr/bin/env bash
# Train the CPU-sized Rust model (configs/models/rust_cpu_12m.toml) on the Debian crate corpus in
# three variants at the same budget (steps, or wall-clock minutes with BUDGET_MIN), then evaluate
# each: validation bpb, compile rate of held-out function completions, HumanEval-Rust-format pass@1
# on tests/data/humaneval_rs_small.jsonl, and the mHC routing analysis (`nanochat eval mhc`).
#
#   bash scripts/rust_variants.sh                      # everything (fetch, build, 3 variants)
#   VARIANTS="n1" STEPS=300 bash scripts/rust_variants.sh   # one variant, shorter
#   BUDGET_MIN=15 VARIANTS="mhc2 n1 dense mhc2sym" TRAIN_ARGS="--set training.eval_interval=50" \
#     bash scripts/rust_variants.sh                    # the README "Real Rust" table: 15 min each
#
# Env: OUT (default runs/rust_variants), DEBIAN (default data/debian), DATA (default data/rust_v8k),
# STEPS (default 600; with BUDGET_MIN the step cap, default 100000, so the clock decides),
# BUDGET_MIN (training minutes per variant via training.max_hours; the schedule decays in time),
# STAGES (default "train eval"; run one to split the work, e.g. between CPU-lock holds),
# COMPILE_N (default 32 held-out completions), VARIANTS (default "mhc2 n1 dense"; mhc2sym is n = 2 with
# the symmetric H_post init, model.mhc_post_main=1.0), LIMIT (fetch only the first N packages),
# TRAIN_ARGS (more `nanochat train` arguments, e.g. "--set training.eval_interval=40"), SUMMARY=0 to skip
# the summary (when running the variants one at a time).
# Results: $OUT/<variant>/{eval-bpb,eval-compile,eval-humaneval-rs}.json and $OUT/summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-runs/rust_variants}
DEBIAN=${DEBIAN:-data/debian}
DATA=${DATA:-data/rust_v8k}
BUDGET_MIN=${BUDGET_MIN:-}
if [ -n "$BUDGET_MIN" ]; then STEPS=${STEPS:-100000}; else STEPS=${STEPS:-600}; fi
STAGES=${STAGES:-"train eval"}
COMPILE_N=${COMPILE_N:-32}
VARIANTS=${VARIANTS:-"mhc2 n1 dense"}
CONFIG=configs/models/rust_cpu_12m.toml
nc() { $PY -m nanochat_ternary.cli "$@"; }

if [ ! -f "$DATA/meta.json" ]; then
  [ -d "$DEBIAN/crates" ] || nc data fetch-debian --out "$DEBIAN" ${LIMIT:+--limit "$LIMIT"} --quiet
  nc data build --source "$DEBIAN/crates" --out "$DATA" --vocab-size 8192 --quiet
fi
mkdir -p "$OUT"
for v in $VARIANTS; do
  case $v in
    mhc2) sets=(--set model.mhc_n_streams=2 --set model.use_bitlinear=true) ;;
    mhc2sym) sets=(--set model.mhc_n_streams=2 --set model.use_bitlinear=true --set model.mhc_post_main=1.0) ;;
    n1) sets=(--set model.mhc_n_streams=1 --set model.use_bitlinear=true) ;;
    dense) sets=(--set model.mhc_n_streams=1 --set model.use_bitlinear=false) ;;
    *) echo "unknown variant $v (mhc2, mhc2sym, n1, dense)" >&2; exit 2 ;;
  esac
  [ -n "$BUDGET_MIN" ] && sets+=(--set "training.max_hours=$($PY -c "print($BUDGET_MIN / 60)")")
  run="$OUT/$v"
  if [[ " $STAGES " == *" train "* ]]; then
    rm -rf "$run"
    nc train --config "$CONFIG" --data "$DATA" --run-dir "$run" --steps "$STEPS" "${sets[@]}" ${TRAIN_ARGS:-} | tee "$run.train.log"
  fi
  [[ " $STAGES " == *" eval "* ]] || continue
  nc eval bpb --model "$run/checkpoints/best" --data "$DATA" --max-tokens 60000 --quiet --output "$run/eval-bpb.json"
  nc eval compile --model "$run/checkpoints/best" -n "$COMPILE_N" --max-tokens 192 --output "$run/eval-compile.json"
  nc eval humaneval-rs --model "$run/checkpoints/best" --problems tests/data/humaneval_rs_small.jsonl -n 5 -k 1 \
     --max-tokens 128 --output "$run/eval-humaneval-rs.json"
  nc eval mhc --model "$run/checkpoints/best" --data "$DATA" --output "$run/eval-mhc.json"
done
[ "${SUMMARY:-1}" = 0 ] && exit 0
$PY - "$OUT" $VARIANTS <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1]); rows = {}
for v in sys.argv[2:]:
    d = out / v
    m = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    best = json.loads((d / "checkpoints/best/best.json").read_text())
    meta = json.loads((d / "checkpoints/latest").parent.joinpath((d / "checkpoints/latest").read_text().strip(), "meta.json").read_text())
    rows[v] = {"tokens_seen": meta["tokens_seen"], "final_loss": [x["loss/ce"] for x in m if "loss/ce" in x][-1],
               "val_curve": [(x["step"], round(x["val/bpb"], 4)) for x in m if "val/bpb" in x], "best": best,
               "bpb": json.loads((d / "eval-bpb.json").read_text())["bpb"],
               "compile_rate": json.loads((d / "eval-compile.json").read_text())["rate"],
               "pass@1": json.loads((d / "eval-humaneval-rs.json").read_text())["pass@1"],
               "steps": meta["step"], "train_seconds": round(meta.get("train_seconds", 0), 1)}
    mhc = json.loads((d / "eval-mhc.json").read_text())["layers"] if (d / "eval-mhc.json").exists() else []
    if mhc:  # how far the routing moved (max over layers) and whether the streams differ at the last layer
        rows[v]["mhc"] = {k: round(max(r[k] for r in mhc), 4) for k in ("d_res", "d_pre", "d_post")}
        rows[v]["mhc"]["last_stream_cosine"] = round(mhc[-1].get("stream_cosine", float("nan")), 4)
(out / "summary.json").write_text(json.dumps(rows, indent=1))
print(json.dumps(rows, indent=1))
PY
