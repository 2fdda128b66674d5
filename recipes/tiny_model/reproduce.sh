#!/usr/bin/env bash
# Rebuild qvgen-tiny end to end on one GPU: the FP base model, then RTN / LSQ / QVGen at W4A4
# and W3A3 with `qvgen train` + `qvgen export` (LSQ and QVGen with several QAT seeds), then the
# comparison of every model.
#
#   recipes/tiny_model/reproduce.sh base WORK       # the FP model, ~8 min on an H200
#   recipes/tiny_model/reproduce.sh quantize WORK   # QAT, export, comparison (needs WORK/base)
#   recipes/tiny_model/reproduce.sh all WORK        # both, one after the other
#   recipes/tiny_model/reproduce.sh figures WORK    # table and pictures of WORK/compare (CPU)
#
# WORK/base/pipeline is the FP model (models/qvgen-tiny); WORK/ship/qvgen-tiny-w4a4 and
# WORK/ship/qvgen-tiny-w3a3 are models/qvgen-tiny-w4a4 and models/qvgen-tiny-w3a3: QVGen's
# median seed by prompt accuracy (`qvgen tiny median`). WORK/compare/wBaB/comparison.json holds
# one bit width's comparison (FP, RTN, and every seed of LSQ and QVGen, named
# <method>-wBaB-seed<k>); `figures` merges them into WORK/figures/comparison.md (mean ± SD over
# seeds, every run ± its standard error) and the gradient-norm plot (mean over seeds).
#
# `quantize` trains, for each width in BITS (default "4 3"; an entry W means WxAx, W:A weights
# of W bits and activations of A, e.g. "2:4" for W2A4, named w2a4), RTN once (deterministic: a seed
# changes nothing it computes) and LSQ and QVGen once per seed in SEEDS (default "0 1 2"; the
# seed orders the clips and draws the timesteps and noise), all side by side on the GPU as
# separate processes, then compares and ships each width. On a machine lent 10 minutes a
# command, run one width a command (BITS=4, then BITS=3: 7 runs and an 8-model comparison, as
# many as the shipped 6-run step, 245 s) with QAT_SECONDS and COMPARE_SECONDS inside the
# command's limit (models/README.md, "Runbook").
#
# The stage budgets below are what the shipped run used (a lent GPU machine allows 10 minutes a
# command); each stage's step count was cut to its budget and logged (recipe_log.jsonl:
# "steps_cut_to"), and a stage that runs slower than its probe stops at its deadline
# ("stopped_at_deadline"). QAT runs save a checkpoint every 50 steps, so a run stopped by
# QAT_SECONDS still exports its latest Φ-free one.
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
# commands, bring that one back (its transformer_state is ~28 MB for the shipped spec;
# recipes/tiny_model/carry.sh packs it into parts that a lent machine returns).
set -euo pipefail
STAGE=${1:?usage: reproduce.sh all|base|quantize|figures|vae|transformer WORK}
WORK=${2:?usage: reproduce.sh all|base|quantize|figures|vae|transformer WORK}
QVGEN=(python3 -m qvgen.cli)  # imports only the command it runs: no service stack needed
WORKERS=${WORKERS:-14}
DEVICE=${DEVICE:-cuda}
COUNT=${COUNT:-200}
QAT_BATCH=${QAT_BATCH:-16}
QAT_STEPS=${QAT_STEPS:-300}
BITS=${BITS:-4 3}
SEEDS=${SEEDS:-0 1 2}

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

w_bits() { echo "${1%%:*}"; }  # of a BITS entry: W, or W of W:A
a_bits() { echo "${1##*:}"; }  # A of W:A, or W of W
width() { echo "w$(w_bits "$1")a$(a_bits "$1")"; }

qat() {  # qat METHOD BITS [SEED]: one run, exported; a QAT method's name ends in -seedSEED
  local name="$1-$(width "$2")"
  local extra=()
  if [[ $1 != rtn ]]; then
    name+="-seed$3"
    extra=(--data "$WORK/data" --steps "$QAT_STEPS" --batch-size "$QAT_BATCH" --lr 1e-4
           --no-gradient-checkpointing --checkpoint-every 50 --cache-dir "$WORK/cache" --seed "$3")
  fi
  [[ $1 == qvgen ]] && extra+=(--rank "${QVGEN_RANK:-32}")
  timeout "${QAT_SECONDS:-3000}" "${QVGEN[@]}" train --model "$WORK/base/pipeline" \
    --out "$WORK/runs/$name" --method "$1" --w-bits "$(w_bits "$2")" --a-bits "$(a_bits "$2")" \
    --frames 17 --height 64 --width 64 --device "$DEVICE" "${extra[@]}" > "$WORK/logs/train-$name.log" 2>&1
  "${QVGEN[@]}" export --checkpoint "$WORK/runs/$name" --out "$WORK/export/$name" \
    > "$WORK/logs/export-$name.log" 2>&1
}

warm_cache() {
  # One process encodes the clips (the VAE encoder is launch-bound: parallel runs encoding at
  # once crawl); the QAT runs then share the finished cache. A one-step run builds it through
  # the trainer's own cache code. A second width in the same WORK finds the cache built.
  [[ -f $WORK/runs/cache/config.json ]] && return 0
  "${QVGEN[@]}" train --model "$WORK/base/pipeline" --data "$WORK/data" --out "$WORK/runs/cache" \
    --method lsq --steps 1 --frames 17 --height 64 --width 64 --device "$DEVICE" \
    --cache-dir "$WORK/cache" > "$WORK/logs/cache.log" 2>&1
}

quantize() {
  mkdir -p "$WORK/logs" "$WORK/runs" "$WORK/export"
  data
  warm_cache
  local pids=() failed=0 bits seed method
  for bits in $BITS; do
    qat rtn "$bits" & pids+=($!)
    for seed in $SEEDS; do
      for method in qvgen lsq; do
        qat "$method" "$bits" "$seed" & pids+=($!)
      done
    done
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  for bits in $BITS; do
    compare_width "$bits" || failed=1
    ship "$bits" || failed=1
  done
  return $failed
}

compare_width() {  # compare_width BITS: FP and every export of that width
  local width models=(--model "fp=$WORK/base/pipeline") dir
  width=$(width "$1")
  for dir in "$WORK"/export/*-"$width"*; do
    [[ -d $dir ]] && models+=(--model "$(basename "$dir")=$dir")
  done
  timeout "${COMPARE_SECONDS:-3000}" "${QVGEN[@]}" tiny compare "${models[@]}" --reference fp \
    --out "$WORK/compare/$width" --device "$DEVICE" --workers "$WORKERS" --batch 270 \
    --count "$COUNT" ${COMPARE_STEPS:+--steps "$COMPARE_STEPS"}
}

ship() {  # ship BITS: QVGen's median seed by prompt accuracy -> WORK/ship/qvgen-tiny-wBaB
  local width name
  width=$(width "$1")
  name=$("${QVGEN[@]}" tiny median --comparison "$WORK/compare/$width" --group "qvgen-$width") \
    && [[ -d $WORK/export/$name ]] || { echo "ship: no median QVGen run of $width"; return 1; }
  mkdir -p "$WORK/ship"
  rm -rf "$WORK/ship/qvgen-tiny-$width"
  cp -r "$WORK/export/$name" "$WORK/ship/qvgen-tiny-$width"
  echo "$name" > "$WORK/ship/qvgen-tiny-$width.from"
  echo "ship: $name is $WORK/ship/qvgen-tiny-$width (QVGen's median seed by prompt accuracy)"
}

figures() {  # the table and pictures of every width compared, the gradient norms of every run
  local comparisons=() runs=() dir
  for dir in "$WORK"/compare/w*a*; do [[ -f $dir/comparison.json ]] && comparisons+=(--comparison "$dir"); done
  for dir in "$WORK"/runs/{lsq,qvgen}-*; do [[ -f $dir/train_log.jsonl ]] && runs+=(--run "$(basename "$dir")=$dir"); done
  "${QVGEN[@]}" tiny figures "${comparisons[@]}" "${runs[@]}" --out "$WORK/figures" \
    --side-by-side fp rtn-w4a4 lsq-w4a4-seed0 qvgen-w4a4-seed0
}

all() {
  mkdir -p "$WORK/logs"
  data & local data_pid=$!
  base
  wait "$data_pid"
  quantize
}

"$STAGE"
