#!/usr/bin/env bash
# The fingerprint of a fixed-seed search: sha256 of alpha_history.jsonl + genotype.json of a tiny
# deterministic search per strategy, to check that a refactor leaves the search's results bit-identical.
# Run it on two checkouts (same machine, same TensorFlow build) and compare the lines:
#
#   bash benchmarks/search_fingerprint.sh /tmp/fp/before 3 1 three_stage darts gdas
#
# Args: output folder, supernet cells, nodes per cell, strategies (three_stage runs the exact hypergradient).
# Extra flags for every run go in FINGERPRINT_FLAGS (e.g. --noone_op_per_edge to compare gdas with code
# from before one operation per sampled edge).
set -euo pipefail
OUT=$1; CELLS=$2; NODES=$3; shift 3
mkdir -p "$OUT"
COMMON="--mode=search --dataset=capnas_shapes --image_size=16 --batch_size=8 --search_epochs=2 --warmup_epochs=0
 --steps_per_epoch=4 --checkpoint_every=2 --supernet_channels=4 --supernet_cells=$CELLS --supernet_nodes=$NODES
 --decoder=lstm --student_decoder=lstm --primitives=none,skip_connect,max_pool_3x3,sep_conv_3x3 --log_every=2
 --search_eval_images=0 --deterministic --data_dir=$OUT/tfds ${FINGERPRINT_FLAGS:-}"
for name in "$@"; do
  extra=""
  [ "$name" = three_stage ] && extra="--hypergradient=exact --stage2=soft"
  rm -rf "$OUT/$name"
  python -m capnas_tf.train --workdir="$OUT/$name" --search_strategy="$name" $extra $COMMON > "$OUT/$name.log" 2>&1
  echo "$name $(cat "$OUT/$name/search/alpha_history.jsonl" "$OUT/$name/search/genotype.json" | sha256sum | cut -c1-64)"
done
