#!/usr/bin/env bash
# Train the CPU-sized Rust model (configs/models/rust_cpu_12m.toml) on the Debian crate corpus in
# three variants at the same step budget, then evaluate each: validation bpb, compile rate of
# held-out function completions, HumanEval-Rust-format pass@1 on tests/data/humaneval_rs_small.jsonl.
#
#   bash scripts/rust_variants.sh                      # everything (fetch, build, 3 variants)
#   VARIANTS="n1" STEPS=300 bash scripts/rust_variants.sh   # one variant, shorter
#
# Env: OUT (default runs/rust_variants), DEBIAN (default data/debian), DATA (default data/rust_v8k),
# STEPS (default 600), VARIANTS (default "mhc2 n1 dense"), LIMIT (fetch only the first N packages),
# TRAIN_ARGS (more `nanochat train` arguments, e.g. "--set training.eval_interval=40"), SUMMARY=0 to skip
# the summary (when running the variants one at a time).
# Results: $OUT/<variant>/{eval-bpb,eval-compile,eval-humaneval-rs}.json and $OUT/summary.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
OUT=${OUT:-runs/rust_variants}
DEBIAN=${DEBIAN:-data/debian}
DATA=${DATA:-data/rust_v8k}
STEPS=${STEPS:-600}
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
    n1) sets=(--set model.mhc_n_streams=1 --set model.use_bitlinear=true) ;;
    dense) sets=(--set model.mhc_n_streams=1 --set model.use_bitlinear=false) ;;
    *) echo "unknown variant $v (mhc2, n1, dense)" >&2; exit 2 ;;
  esac
  run="$OUT/$v"
  rm -rf "$run"
  nc train --config "$CONFIG" --data "$DATA" --run-dir "$run" --steps "$STEPS" "${sets[@]}" ${TRAIN_ARGS:-} | tee "$run.train.log"
  nc eval bpb --model "$run/checkpoints/best" --data "$DATA" --max-tokens 60000 --quiet --output "$run/eval-bpb.json"
  nc eval compile --model "$run/checkpoints/best" -n 16 --max-tokens 192 --output "$run/eval-compile.json"
  nc eval humaneval-rs --model "$run/checkpoints/best" --problems tests/data/humaneval_rs_small.jsonl -n 5 -k 1 \
     --max-tokens 128 --output "$run/eval-humaneval-rs.json"
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
               "pass@1": json.loads((d / "eval-humaneval-rs.json").read_text())["pass@1"]}
(out / "summary.json").write_text(json.dumps(rows, indent=1))
print(json.dumps(rows, indent=1))
PY
