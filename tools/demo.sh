#!/usr/bin/env bash
# The whole job on CPU, on data it makes itself: synthetic shapes written as Pascal VOC,
# converted to TFRecords, an SSD300 trained from scratch with validation mAP after each epoch,
# the exported SavedModel evaluated, and a prediction drawn to PNG with SageMaker's JSON.
#   bash tools/demo.sh [OUTPUT_DIR]          (default: demo_output; 5 to 10 minutes on 2 cores)
# The recipe (epochs, batch size, schedule, training images) is flags/demo_shapes_cpu.flags;
# tools/benchmark_demo.py measures it.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-demo_output}
flagfile=flags/demo_shapes_cpu.flags
train_images=$(sed -n 's/^--num_training_samples=//p' "$flagfile")
rm -rf "$out"
set -x
python tools/make_shapes_dataset.py --output_dir="$out/voc" --num_train="$train_images" --num_val=50
tfssd-convert --format=voc --voc_dir="$out/voc" --split=train --output="$out/data/train"
tfssd-convert --format=voc --voc_dir="$out/voc" --split=val --output="$out/data/val"
tfssd-train --flagfile="$flagfile" \
    --train="$out/data/train-*" --validation="$out/data/val-*" --model_dir="$out/model"
tfssd-evaluate --model="$out/model/export" --validation="$out/data/val-*"
tfssd-predict --model="$out/model/export" --output_dir="$out/predictions" \
    "$out"/voc/JPEGImages/shapes_0040{0,1,2}.jpg
set +x
echo "Predictions drawn in $out/predictions/*.png; TensorBoard: tensorboard --logdir $out/model"
