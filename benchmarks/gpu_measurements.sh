# The measurements session 19 prepared but could not run, one device call per issue (each
# step alone on the GPU, ~5-8 minutes a call), results in $OUT/measurements-<issue>.tgz:
#   bash benchmarks/gpu_measurements.sh 15|15b|22     (from the repository root, .whl/ carried)
# Here: `tar -C benchmarks/results -xzf FILES_AT/measurements-<issue>.tgz`, read, commit.
# Each step has its own time limit, so one that hangs or dies leaves the others' results.
issue=${1:-}
case "$issue" in 15|15b|22) ;; *) echo "usage: bash benchmarks/gpu_measurements.sh 15|15b|22 (the issue; 15b: its second call)" >&2; exit 2;; esac
[ -n "${OUT:-}" ] || { echo "gpu_measurements: OUT is unset (run it through the device tool)" >&2; exit 2; }
. benchmarks/device_env.sh >/dev/null || exit 1
res=/tmp/measurements-$issue
mkdir -p "$res"
pack() { tar -C "$res" -czf "$OUT/measurements-$issue.tgz" . && ls -l "$OUT"; }
trap pack EXIT
step() {  # step SECONDS NAME COMMAND...: runs it, logs its exit status
  local secs=$1 name=$2; shift 2
  echo "=== $name ($(date +%T), limit ${secs}s)"
  timeout -k 10 "$secs" "$@" > "$res/$name.log" 2>&1
  echo "=== $name: exit $?"; tail -n 25 "$res/$name.log" | grep -v -E 'cuda_timer|^\s*$'
}
if [ "$issue" = 15 ]; then
# The study's own short-phase step (64-blocks) beside the 128-block row, then the Triton tiles
# at the study's short shapes.
step 220 train_loop_6m512_block128 python3 -m benchmarks.train_loop --preset h200 --only 6m:512 \
  --out "$res/train_loop_6m512_block128.json"
step 220 train_loop_6m512_block64 python3 -m benchmarks.train_loop --preset h200 --only 6m:512 \
  --block 64 --out "$res/train_loop_6m512_block64.json"
step 110 tune_512_block64 python3 -m benchmarks.attention --preset h100 \
  --tune "$res/tune_512_block64.json" --tune-length 512 --tune-block 64 --batch 64 --heads 4 \
  --tune-head-dims 64 --densities 1
elif [ "$issue" = 15b ]; then
# The study's own long step (blocks 64, sink 64): the Triton kernel it ran until session 20
# against the default now (cuDNN for its dense layers at T >= 2048, the sink no longer hiding
# that the layout is dense causal), 6m and 3m at 4096.
for size in 6m 3m; do
  step 200 "train_loop_${size}4096_sink64_triton" python3 -m benchmarks.train_loop --preset h200 \
    --only "$size:4096" --block 64 --sink 64 --impl pallas_triton \
    --out "$res/train_loop_${size}4096_sink64_triton.json"
  step 200 "train_loop_${size}4096_sink64_default" python3 -m benchmarks.train_loop --preset h200 \
    --only "$size:4096" --block 64 --sink 64 --out "$res/train_loop_${size}4096_sink64_default.json"
done
else
# The two-warpgroup passes on the real lowering, each check in its own process, then their
# timing against the one-warpgroup kernels and cuDNN, then the registered kernels' sweep.
step 180 mosaic_cases_two_compute python3 benchmarks/mosaic_gpu_cases.py "$res" -k two_compute
step 180 mosaic_warpgroups_D128 python3 -m benchmarks.mosaic_warpgroups --lengths 8192 \
  --head-dim 128 --out "$res/mosaic_warpgroups_D128.json"
step 180 attention_mosaic_T8192_D128 python3 -m benchmarks.attention --preset h100 \
  --impls pallas_mosaic_gpu pallas_triton --baselines cudnn flex --lengths 8192 \
  --out "$res/attention_mosaic_T8192_D128.json"
fi
