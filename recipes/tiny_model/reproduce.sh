#!/usr/bin/env bash
# Rebuild qvgen-tiny end to end on one GPU: the FP base model, then RTN / LSQ / QVGen at W4A4
# and W3A3 with `qvgen train` + `qvgen export`, then the comparison of all seven models.
#
#   recipes/tiny_model/reproduce.sh base WORK       # the FP model, ~8 min on an H200
#   recipes/tiny_model/reproduce.sh quantize WORK   # QAT, export, comparison (needs WORK/base), ~4 min
#   recipes/tiny_model/reproduce.sh all WORK        # both, one after the other
#
# WORK/base/pipeline is the FP model (models/qvgen-tiny); WORK/export/qvgen-w4a4 and
# WORK/export/qvgen-w3a3 are models/qvgen-tiny-w4a4 and models/qvgen-tiny-w3a3;
# WORK/compare/comparison.json holds the table of README.md. The stage budgets below are what
# the shipped run used (a lent GPU machine allows 10 minutes a command); each stage's step
# count was cut to its budget and logged (recipe_log.jsonl: "steps_cut_to"), and a stage that
# runs slower than its probe stops at its deadline ("stopped_at_deadline"). QAT runs save a
# checkpoint every 50 steps, so a run stopped by QAT_SECONDS still exports its latest Φ-free one.
#
# The base model in pieces, for a transformer trained longer than one command allows:
#
#   recipes/tiny_model/reproduce.sh vae WORK          # the VAE alone -> WORK/vae, ~4 min on an H200
#   recipes/tiny_model/reproduce.sh transformer WORK  # one piece of the transformer; run it again
#                                                      # until it says the plan is complete
#
# `transformer` trains a plan of FLOW_STEPS steps (default 10400, 4× the shipped model's 2595)
# whose cosine schedule decays over the whole plan, PIECE_SECONDS (default 480) of it per call,
# each piece in a new directory WORK/transformer/piece-N that continues the latest one that saved
# a state (--resume-transformer). The first piece takes the VAE, text encoder and tokenizer of
# VAE_FROM (default WORK/vae; models/qvgen-tiny reuses the shipped VAE and skips `vae`). A call
# costs PIECE_SECONDS plus ~40 s (rendering the clips, encoding their latents, saving). The piece
# that completes the plan writes its pipeline, copied to WORK/base, so `quantize` follows as usual.
# A piece needs only the directory of the piece before it: on machines that keep nothing between
# commands, bring that one back (its transformer_state is ~28 MB for the shipped spec).
set -euo pipefail
STAGE=${1:?usage: reproduce.sh all|base|quantize|vae|transformer WORK}
WORK=${2:?usage: reproduce.sh all|base|quantize|vae|transformer WORK}
QVGEN=(python3 -m qvgen.cli)  # imports only the command it runs: no service stack needed
WORKERS=${WORKERS:-14}
DEVICE=${DEVICE:-cuda}
COUNT=${COUNT:-200}
QAT_BATCH=${QAT_BATCH:-16}
QAT_STEPS=${QAT_STEPS:-300}

data() {
  mkdir -p "$WORK/logs"
  [[ -f $WORK/data/videos.txt ]] || "${QVGEN[@]}" data synthetic --out "$WORK/data" \
    --count "${QAT_CLIPS:-256}" --seed 2000 > "$WORK/logs/data.log" 2>&1
}

# The recipe's settings; every piece of a split run repeats them.
RECIPE=(--device "$DEVICE" --workers "$WORKERS" --clips 12000 --vae-steps 3000 --vae-batch 24
        --vae-seconds "${VAE_SECONDS:-200}" --flow-batch "${FLOW_BATCH:-512}")

base() {
  "${QVGEN[@]}" tiny train-base --out "$WORK/base" "${RECIPE[@]}" --flow-steps 12000 \
    --flow-seconds "${FLOW_SECONDS:-215}"
}

vae() {
  "${QVGEN[@]}" tiny train-base --out "$WORK/vae" "${RECIPE[@]}" --vae-only
}

transformer() {
  local piece last="" n=0 from
  for piece in $(ls -d "$WORK"/transformer/piece-* 2>/dev/null | sort -V); do
    n=${piece##*-}  # the next piece gets a new number even after a piece that saved nothing
    [[ -f $piece/transformer_state/state.json ]] && last=$piece
  done
  if [[ -n $last && -d $last/pipeline ]]; then
    echo "transformer: the plan is complete in $last"
    return 0
  fi
  if [[ -n $last ]]; then from=(--resume-transformer "$last"); else
    from=(--vae-from "${VAE_FROM:-$WORK/vae}"); fi
  piece=$WORK/transformer/piece-$((n + 1))
  "${QVGEN[@]}" tiny train-base --out "$piece" "${RECIPE[@]}" --flow-steps "${FLOW_STEPS:-10400}" \
    --piece-seconds "${PIECE_SECONDS:-480}" "${from[@]}"
  if [[ -d $piece/pipeline ]]; then
    [[ -e $WORK/base ]] && { echo "transformer: $WORK/base exists; $piece/pipeline is the model"; return 1; }
    mkdir -p "$WORK/base" && cp -r "$piece/pipeline" "$piece/recipe.json" "$WORK/base/"
    echo "transformer: the plan is complete; $WORK/base/pipeline is the FP model"
  else
    echo "transformer: paused in $piece; run this stage again to continue"
  fi
}

qat() {  # qat METHOD BITS
  local name="$1-w$2a$2"
  local extra=()
  if [[ $1 != rtn ]]; then
    extra=(--data "$WORK/data" --steps "$QAT_STEPS" --batch-size "$QAT_BATCH" --lr 1e-4
           --no-gradient-checkpointing --checkpoint-every 50 --cache-dir "$WORK/cache")
  fi
  [[ $1 == qvgen ]] && extra+=(--rank "${QVGEN_RANK:-32}")
  timeout "${QAT_SECONDS:-3000}" "${QVGEN[@]}" train --model "$WORK/base/pipeline" \
    --out "$WORK/runs/$name" --method "$1" --w-bits "$2" --a-bits "$2" --frames 17 \
    --height 64 --width 64 --device "$DEVICE" "${extra[@]}" > "$WORK/logs/train-$name.log" 2>&1
  "${QVGEN[@]}" export --checkpoint "$WORK/runs/$name" --out "$WORK/export/$name" \
    > "$WORK/logs/export-$name.log" 2>&1
}

warm_cache() {
  # One process encodes the clips (the VAE encoder is launch-bound: parallel runs encoding at
  # once crawl); the QAT runs then share the finished cache. A one-step run builds it through
  # the trainer's own cache code.
  "${QVGEN[@]}" train --model "$WORK/base/pipeline" --data "$WORK/data" --out "$WORK/runs/cache" \
    --method lsq --steps 1 --frames 17 --height 64 --width 64 --device "$DEVICE" \
    --cache-dir "$WORK/cache" > "$WORK/logs/cache.log" 2>&1
}

quantize() {
  mkdir -p "$WORK/logs" "$WORK/runs" "$WORK/export"
  data
  warm_cache
  local pids=() failed=0
  for method in qvgen lsq rtn; do
    for bits in 4 3; do
      qat "$method" "$bits" & pids+=($!)
    done
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  local models=(--model "fp=$WORK/base/pipeline")
  for name in rtn-w4a4 lsq-w4a4 qvgen-w4a4 rtn-w3a3 lsq-w3a3 qvgen-w3a3; do
    [[ -d $WORK/export/$name ]] && models+=(--model "$name=$WORK/export/$name")
  done
  timeout "${COMPARE_SECONDS:-3000}" "${QVGEN[@]}" tiny compare "${models[@]}" --reference fp \
    --out "$WORK/compare" --device "$DEVICE" --workers "$WORKERS" --batch 270 \
    --count "$COUNT" ${COMPARE_STEPS:+--steps "$COMPARE_STEPS"} || failed=1
  return $failed
}

all() {
  mkdir -p "$WORK/logs"
  data & local data_pid=$!
  base
  wait "$data_pid"
  quantize
}

"$STAGE"
