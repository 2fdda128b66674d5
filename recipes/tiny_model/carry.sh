#!/usr/bin/env bash
# Move a run's directories between this machine and a lent GPU machine that keeps nothing
# between commands and returns at most 8 files of at most 16 MiB from $OUT, none deeper than two
# folders (/work/.library/device/README.md on the machines that lend them): one tar stream of
# repository-relative paths, split into 15 MiB parts named NAME.tar.part-00, -01, …
#
#   recipes/tiny_model/carry.sh pack NAME DEST PATH...   # on the GPU machine: DEST=$OUT
#   recipes/tiny_model/carry.sh unpack NAME SRC          # here, in the repository root:
#                                                        # SRC = the call's files_at folder
#
# Paths are packed as given (relative to the repository root), so `unpack` in the root puts
# them back where the next command finds them, e.g. runs/tiny/transformer/piece-1.
set -euo pipefail
ACTION=${1:?usage: carry.sh pack NAME DEST PATH... | carry.sh unpack NAME SRC}
NAME=${2:?usage: carry.sh pack NAME DEST PATH... | carry.sh unpack NAME SRC}
DIR=${3:?usage: carry.sh pack NAME DEST PATH... | carry.sh unpack NAME SRC}
PART_BYTES=15M  # under the 16 MiB a returned file may have
MAX_PARTS=8

case $ACTION in
  pack)
    shift 3
    (( $# )) || { echo "carry.sh pack: name the paths to pack" >&2; exit 2; }
    mkdir -p "$DIR"
    tar -cf - "$@" | split -b "$PART_BYTES" -d -a 2 - "$DIR/$NAME.tar.part-"
    parts=$(ls "$DIR/$NAME.tar.part-"* | wc -l)
    if (( parts > MAX_PARTS )); then
      echo "carry.sh pack: $parts parts of $PART_BYTES, more than the $MAX_PARTS a call returns" >&2
      exit 1
    fi
    echo "carry.sh: packed $* into $parts part(s) $DIR/$NAME.tar.part-*"
    ;;
  unpack)
    compgen -G "$DIR/$NAME.tar.part-*" > /dev/null \
      || { echo "carry.sh unpack: no $DIR/$NAME.tar.part-*" >&2; exit 2; }
    cat "$DIR/$NAME.tar.part-"* | tar -xf -
    echo "carry.sh: unpacked $NAME into $(pwd)"
    ;;
  *)
    echo "carry.sh: unknown action $ACTION (pack or unpack)" >&2
    exit 2
    ;;
esac
