# One piece of a study on a lent GPU machine, its run records always brought back:
#   bash benchmarks/study_piece.sh PRESET STUDY_DIR SECONDS RUN...     (from the repository root)
# trains/evaluates RUN... (run ids, labels or label prefixes) two side by side, stops cleanly
# after SECONDS (the trainer saves; the next piece resumes), and writes $OUT/<study>.tgz: the
# study folder without checkpoints (too large to come back) whatever happened, since the next
# call's copy of the working tree deletes every run record that did not come back (session 17
# lost two trained 3m runs that way). Here: `tar -C studies -xzf FILES_AT/<study>.tgz`, then
# commit, before the next call. Needs .whl/ carried (benchmarks/device_env.sh).
# A run stopped mid-training whose checkpoints fit one returned file (≤ 15 MiB: 300k and 800k
# models, not 3m) also comes back, as $OUT/ckpt-<run id>.tgz: extract it here with
# `tar -C studies -xzf FILES_AT/ckpt-<id>.tgz` and name `studies/<study>/runs/<id>/checkpoints`
# in the next call's carry (they are ignored by git), so a fresh machine resumes it.
# On a warm machine each piece also keeps its records in $STUDY_RECORDS/<study> (default
# /tmp/study_records), and the next piece restores from there every run further along than the
# working tree's copy (evaluated, or trained to a later step): that copy deletes the records not
# extracted here before the call (session 20 lost three finished runs' records so, recovered
# only because the earlier call's archive was still on this machine).
[ $# -ge 4 ] || { echo "usage: bash benchmarks/study_piece.sh PRESET STUDY_DIR SECONDS RUN..." >&2; exit 2; }
preset=$1 dir=${2%/} secs=$3; shift 3
[ -d "$dir" ] || [ ! -e "$dir" ] || { echo "study_piece: $dir is not a folder" >&2; exit 2; }
[ -n "${OUT:-}" ] || { echo "study_piece: OUT is unset (run it through the device tool)" >&2; exit 2; }
records=${STUDY_RECORDS:-/tmp/study_records}
bring_back() {
  tar -C "$(dirname "$dir")" -czf "$OUT/$(basename "$dir").tgz" --exclude .jax_cache \
    --exclude checkpoints "$(basename "$dir")"
  local n=0 c
  for c in "$dir"/runs/*/checkpoints; do
    [ -d "$c" ] && [ "$(du -sm "$c" | cut -f1)" -le 15 ] && [ "$n" -lt 5 ] || continue
    grep -q '"state": *"done"' "$(dirname "$c")/job.json" 2>/dev/null && continue
    tar -C "$(dirname "$dir")" -czf "$OUT/ckpt-$(basename "$(dirname "$c")").tgz" \
      "$(basename "$dir")/runs/$(basename "$(dirname "$c")")/checkpoints" && n=$((n + 1))
  done
  mkdir -p "$records" && rm -rf "${records:?}/$(basename "$dir")" &&
    tar -C "$(dirname "$dir")" -cf - --exclude .jax_cache --exclude checkpoints \
      "$(basename "$dir")" | tar -C "$records" -xf -
  ls -l "$OUT"
  # Whether the compilation cache could travel between sessions (a size's evaluation programs
  # are the same at every budget): its size, for the next plan.
  du -sh "${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}" 2>/dev/null
}
trap bring_back EXIT
restore_records() {  # from the previous piece on this machine: see the header
  [ -d "$records/$(basename "$dir")/runs" ] || return 0
  python3 - "$records/$(basename "$dir")/runs" "$dir/runs" <<'PY'
import json, shutil, sys
from pathlib import Path
saved, here = map(Path, sys.argv[1:])
def further(run):  # how far a record got: 0 none, 1 + its trained step, 10**12 evaluated
  def read(name):
    try:
      return json.loads((run / name).read_text())
    except (OSError, ValueError):
      return None
  job, status = read("job.json"), read("status.json")
  if (job or {}).get("state") == "done":
    return 10**12
  return 1 + int(status.get("step", 0)) if status else int(job is not None)
for run in sorted(saved.iterdir()):
  if further(run) > further(here / run.name):
    shutil.copytree(run, here / run.name, dirs_exist_ok=True)
    print(f"study_piece: restored {here / run.name} from the last piece")
PY
}
restore_records
. benchmarks/device_env.sh || exit 1
timeout -s TERM -k 30 "$secs" python3 -m experiments run --preset "$preset" --out "$dir" \
  --no-report --wandb disabled --workers 2 --runs-per-device 2 --only "$@" 2>&1 \
  | grep -v -E 'cuda_timer|slow_operation_alarm|^\s*$'
python3 -m experiments status "$dir"
