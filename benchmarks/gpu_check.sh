#!/usr/bin/env bash
# The GPU check: one command that measures digseg on a machine with a CUDA GPU (written for one
# H100/H200) within 9 minutes.
#
#   bash benchmarks/gpu_check.sh --prepare     # on a machine with internet, once: download the wheels the GPU
#                                              # image lacks into .whl/
#   bash benchmarks/gpu_check.sh               # on the GPU machine (copy .whl/ along with the checkout)
#   bash benchmarks/gpu_check.sh --cpu-smoke   # every step at tiny sizes on the CPU (3-7 min): the script works
#
# Steps, each under its own time budget (a step that runs out is cut and reported; later steps still run):
#   1. the tests marked `gpu` (tests/test_gpu.py): every pipeline path on CUDA, bf16, the trainer, torch.compile
#   2. cli (benchmarks/cli_device_check.py): `digseg predict` and `digseg eval` with --device/--dtype auto run on
#      CUDA in bf16 with the weights on the GPU (smoke: on the CPU in fp32)
#   3. inference, 512 px, bf16, E-Step 1x1/1x2/4x2/8x2, 8 images per call, against diffusers' Marigold on the
#      same modules: eager with the VAE decoder, eager with the light mask decoder, compiled with the light decoder
#   4. training throughput (benchmarks/bench_training.py), 512 px, SD2-sized, bf16: batch 4 and 8, gradient
#      checkpointing off/on
#   5. the data stage (benchmarks/bench_data.py --gpu-check): decode + augment with loader workers, workers per GPU
#   6. training memory (benchmarks/bench_train_memory.py): peak GPU memory of an SD2-sized 512 px step by memory
#      lever at batch 2 (the one-GPU recipe's micro-batch), docs/training.md's table measured on the card
#   fsdp: sharded training (--sharding fsdp) in one process on CUDA: train, checkpoint, SIGKILL, resume (the test
#      marked `gpu` in tests/test_sharded_training.py; 2-process sharding is tested on the CPU)
#   compiled inference (step 3's light decoder under torch.compile) runs after the training-memory step
#   sdxl (benchmarks/bench_sdxl.py): the SDXL-sized random backbone, 1x1 inference at 512 and 1024 px in bf16 and the
#      training cells that fit the card
#   export (benchmarks/bench_export.py): the SD2-sized random model exported to ONNX (on the CPU), then 1x1 and
#      one-step at 512 px: PyTorch on CUDA (fp32, bf16 channels-last) against onnxruntime's CUDA and, where the image
#      has it, TensorRT execution providers (fp32 graphs), and the CPU provider's fp32 and int8; images/s and peak RSS
#      (needs onnxruntime-gpu, onnx and onnxscript: --prepare fetches them; without a provider its cell is skipped
#      and reported)
# Everything goes to $OUT (default ./gpu-check-out): gpu_check.log (all output), gpu_check.md (every table),
# *.json (figures). The last line printed is a one-line summary.
# `--only train_memory,fsdp,sdxl` runs the named steps only (names as above and in the summary line), each with
# its own budget: the steps a full run's 9-minute budget left out get a run of their own.
# Exit status: 0 when every step passed; 1 when any failed, timed out or was skipped; 2 without a CUDA device.
# A step passes when its command exits 0 and leaves what it should: its JSON (steps with figures), and in the
# pytest steps every selected test run, none skipped. In --cpu-smoke mode a step also fails when it recorded a
# failed, out-of-memory or not-run cell (train_memory, sdxl), which a GPU run may report as a finding; and every
# step runs under its own budget (the total budget only bounds a GPU run), so none is cut or skipped for time.
# Needs the `bench` and `lowmem` extras beyond the base install (pip install -e ".[bench,lowmem]"): pytest, scipy for
# Marigold, torchao for the 8-bit AdamW rows.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
ONLY=""  # --only NAME,NAME: run these steps only (e.g. the ones the 9-minute budget of a full run left out)
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu-smoke) MODE=smoke ;;
        --prepare) MODE=prepare ;;
        --only) ONLY=",${2:-},"; shift ;;
        -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "usage: bash benchmarks/gpu_check.sh [--prepare | --cpu-smoke] [--only STEP,STEP] [--help]" >&2; exit 2 ;;
    esac
    shift
done

WHEELS=.whl  # ignored by git (.gitignore); copy it along with the checkout to the GPU machine
if [ "$MODE" = prepare ]; then
    # The GPU image has torch, transformers, accelerate, safetensors, huggingface_hub, tensorboard, psutil, PyYAML;
    # it lacks diffusers, importlib_metadata (diffusers needs it) and torchao (8-bit AdamW). Same versions as the machine
    # that runs --prepare.
    versions=$(python3 -c "import diffusers, importlib_metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in ('diffusers', 'importlib_metadata', 'torchao')))")
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    # shellcheck disable=SC2086
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" $versions || exit 1
    # the export step's: onnxruntime with the CUDA (and TensorRT) providers, the exporter's onnx and onnxscript;
    # fetched on their own, so that a version missing for the GPU image leaves the other steps' wheels in place
    versions=$(python3 -c "import importlib_metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in ('onnx', 'onnxscript', 'onnx_ir', 'ml_dtypes')) + ' onnxruntime-gpu==' + m.version('onnxruntime'))")
    # shellcheck disable=SC2086
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" $versions \
        || echo "the export step's wheels ($versions) were not all found: that step will report what is missing"
    ls -l "$WHEELS"; du -sh "$WHEELS"
    exit 0
fi

OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
MD="$OUT/gpu_check.md"
[ -z "$ONLY" ] && : >"$LOG"  # --only adds to a full run's log and tables
: >"$MD"
# every step, in order; those that write figures (<name>.json), and the pytest steps (<name>.xml, JUnit)
STEPS=(tests cli inference_eager_vae inference_eager_light training fsdp data train_memory inference_compiled_light
       sdxl export)
STEP_JSONS=(cli inference_eager_vae inference_eager_light training data train_memory inference_compiled_light sdxl
            export)
PYTEST_STEPS=(tests fsdp)
for name in "${STEPS[@]}"; do  # a step that fails writes none: show no stale one
    [ -z "$ONLY" ] || [[ "$ONLY" == *",$name,"* ]] && rm -f "$OUT/$name.json" "$OUT/$name.xml"
done
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error DIFFUSERS_VERBOSITY=error
# the check's own torch.compile cache, kept warm between runs; what a cut step wrote there is removed: a step cut
# while compiling can leave a truncated kernel (a 0-byte .so) that breaks every later compile ("file too short")
export TORCHINDUCTOR_CACHE_DIR=/tmp/digseg-gpu-check-inductor
STEP_STAMP=$(mktemp)
trap 'rm -f "$STEP_STAMP"' EXIT
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
START=$(date +%s)
TOTAL_BUDGET=525  # seconds: the whole check ends within 9 minutes
declare -a RESULTS=()

log() { echo "$*" | tee -a "$LOG"; }

# run_step NAME BUDGET_SECONDS COMMAND...: runs under `timeout`, never past the total budget; records the outcome
run_step() {
    local name=$1 budget=$2; shift 2
    [ -n "$ONLY" ] && [[ "$ONLY" != *",$name,"* ]] && return  # not selected: not run, not reported
    local left=$((TOTAL_BUDGET - ($(date +%s) - START)))
    [ "$budget" -gt "$left" ] && budget=$left
    if [ "$budget" -lt 20 ]; then
        log "## $name: SKIPPED (only ${left}s of the ${TOTAL_BUDGET}s budget left)"
        RESULTS+=("$name=skipped"); return
    fi
    log "## $name (budget ${budget}s): $*"
    local t0=$(date +%s) rc
    touch "$STEP_STAMP"
    timeout --kill-after=10 "$budget" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    local dt=$(($(date +%s) - t0))
    case $rc in
        0) RESULTS+=("$name=ok(${dt}s)") ;;
        124|137) RESULTS+=("$name=TIMEOUT(${dt}s)")
                 find "$TORCHINDUCTOR_CACHE_DIR" -newer "$STEP_STAMP" -type f -delete 2>/dev/null ;;
        *) RESULTS+=("$name=FAILED(rc=$rc)") ;;
    esac
    log "## $name: rc=$rc in ${dt}s"
}

if [ "$MODE" = gpu ]; then
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$WHEELS"/*.whl 2>&1 | tee -a "$LOG" && export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
    python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || { log "no CUDA device: use --cpu-smoke"; exit 2; }
    DEVICE=cuda; SIZE=512; BATCH=8; INF_FLAGS=(--sizes 512 --dtypes bf16 --repeats 3); TRAIN_FLAGS=(--size 512)
    TEST_ENV=(); BACKBONE=/tmp/digseg-sd2-backbone; CLI_EXPECT=(--expect-device cuda --expect-dtype bf16)
    B_TESTS=150; B_CLI=80; B_INF=110; B_LIGHT=80; B_TRAIN=120; B_DATA=40; B_COMPILE=400; COMPILE_SETTINGS=1x1,1x2,4x2,8x2
    B_MEM=150; MEM_FLAGS=(--model sd2 --size 512 --batches 2)
else
    DEVICE=cpu; SIZE=64; BATCH=2; INF_FLAGS=(--quick --dtypes bf16 --repeats 1); TRAIN_FLAGS=(--quick --repeats 1)
    TEST_ENV=(env DIGSEG_TEST_DEVICE=cpu); BACKBONE=/tmp/digseg-tiny-backbone-smoke; rm -rf "$BACKBONE"
    CLI_EXPECT=(--expect-device cpu --expect-dtype fp32)
    B_TESTS=150; B_CLI=60; B_INF=45; B_LIGHT=45; B_TRAIN=40; B_DATA=40
    B_COMPILE=300  # from a cold compile cache 151 s on 2 busy cores, 24 s warm
    # no total bound: each step has its own budget, and a step cut or skipped for time fails the smoke run
    TOTAL_BUDGET=100000
    B_MEM=90; MEM_FLAGS=(--model tiny --size 64 --batches 1 --levers none)  # 8-bit AdamW compiles: minutes
    COMPILE_SETTINGS=1x1  # each further shape recompiles: minutes on a CPU
    # one thread: on 2 busy cores OpenMP's spinning barriers made a tiny call 70x slower (6 s instead of 0.08 s)
    export OMP_NUM_THREADS=1
fi
python3 - <<'EOF' 2>&1 | tee -a "$LOG"
import os, platform, torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
print(f"# digseg GPU check: {name}, torch {torch.__version__}, CUDA {torch.version.cuda}, {os.cpu_count()} CPUs, "
      f"python {platform.python_version()}")
EOF
SETTINGS=1x1,1x2,4x2,8x2
INF=(python3 benchmarks/bench_inference.py --device "$DEVICE" --batch "$BATCH" --settings "$SETTINGS"
     --backbone-dir "$BACKBONE" "${INF_FLAGS[@]}")

run_step tests "$B_TESTS" "${TEST_ENV[@]}" python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider \
    -rs --junitxml "$OUT/tests.xml"
run_step cli "$B_CLI" python3 benchmarks/cli_device_check.py "${CLI_EXPECT[@]}" --timeout $((B_CLI / 2 - 5)) \
    --json "$OUT/cli.json"
run_step inference_eager_vae "$B_INF" "${INF[@]}" --json "$OUT/inference_eager_vae.json"
run_step inference_eager_light "$B_LIGHT" "${INF[@]}" --light-decoder --json "$OUT/inference_eager_light.json"
run_step training "$B_TRAIN" python3 benchmarks/bench_training.py --device "$DEVICE" "${TRAIN_FLAGS[@]}" \
    --num-workers 2 --backbone-dir "$BACKBONE" --json "$OUT/training.json"
# ---- sharded training (FSDP2 + torch.distributed.checkpoint) on the GPU: one process proves the CUDA/NCCL path
B_FSDP=90
run_step fsdp "$B_FSDP" "${TEST_ENV[@]}" python3 -m pytest -q -m gpu tests/test_sharded_training.py \
    -p no:cacheprovider -rs --junitxml "$OUT/fsdp.xml"
# ---- end of sharded training
run_step data "$B_DATA" python3 benchmarks/bench_data.py --gpu-check --json "$OUT/data.json"
run_step train_memory "$B_MEM" python3 benchmarks/bench_train_memory.py --device "$DEVICE" "${MEM_FLAGS[@]}" \
    --backbone-dir "$BACKBONE" --json "$OUT/train_memory.json"
run_step inference_compiled_light "$B_COMPILE" "${INF[@]}" --light-decoder --compile --settings "$COMPILE_SETTINGS" --json "$OUT/inference_compiled_light.json"

# --- SDXL-sized step (separate block): benchmarks/bench_sdxl.py on the SDXL-sized random backbone (2.57 B U-Net):
# 1x1 inference at 512 and 1024 px in bf16, and the training cells that fit the card (AdamW + EMA, AdamW, 8-bit
# AdamW with checkpointing; 3 steps, 512 px, bf16 autocast, batch 4). SD2's figures are the steps above. Its table
# goes to sdxl.json and is printed by bench_sdxl.py itself (not part of gpu_check.md's summary).
if [ "$MODE" = gpu ]; then
    SDXL_FLAGS=(--device cuda --models sdxl --dtypes bf16 --train --train-batch 4
                --backbone-dir /tmp/digseg-size-backbones); B_SDXL=300
else
    # the 8-bit AdamW cell compiles torchao's optimizer: about 2 min from a cold compile cache on 2 cores
    SDXL_FLAGS=(--quick --models tiny-sdxl --dtypes fp32 --train); B_SDXL=240
fi
run_step sdxl "$B_SDXL" python3 benchmarks/bench_sdxl.py "${SDXL_FLAGS[@]}" --json "$OUT/sdxl.json"
# --- end of the SDXL-sized step

# --- export step (separate block): benchmarks/bench_export.py, the exported model on onnxruntime against PyTorch
if [ "$MODE" = gpu ]; then
    EXPORT_FLAGS=(--model sd2 --size 512 --repeats 3 --device cuda --providers cpu,cuda,tensorrt
                  --work /tmp/digseg-export-bench); B_EXPORT=480  # the SD2-sized export alone takes minutes
else
    EXPORT_FLAGS=(--quick --repeats 1 --providers cpu,cuda,tensorrt); B_EXPORT=600  # 7 min on 2 busy cores
fi
run_step export "$B_EXPORT" python3 benchmarks/bench_export.py "${EXPORT_FLAGS[@]}" --json "$OUT/export.json"
# --- end of the export step

# every table into gpu_check.md, then the one-line summary (last line printed); exits 1 unless every step passed
python3 - "$OUT" "$(($(date +%s) - START))" "$MODE" "$ONLY" "${STEPS[*]}" "${STEP_JSONS[*]}" "${PYTEST_STEPS[*]}" \
    "${RESULTS[@]}" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
import xml.etree.ElementTree as ET
from pathlib import Path

out, seconds, mode, only = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
steps, step_jsons, pytest_steps = (sys.argv[k].split() for k in (5, 6, 7))
results = sys.argv[8:]


def unmet(name: str) -> str | None:
    """Why step `name`, whose command exited 0, still fails; None when it passed."""
    if name in step_jsons and not (out / f"{name}.json").is_file():
        return f"no {name}.json"
    if name in pytest_steps:
        xml = out / f"{name}.xml"
        suites = list(ET.parse(xml).getroot().iter("testsuite")) if xml.is_file() else []
        ran, skipped = (sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "skipped"))
        if not suites or ran == 0:
            return "no test ran"
        if skipped:
            return f"{skipped} of {ran} tests skipped"
    if mode != "smoke":  # on a GPU an out-of-memory cell, or an SDXL cell that does not fit the card, is a finding
        return None
    if name == "train_memory":
        rows = json.loads((out / "train_memory.json").read_text())["cells"].values()
        cells = [cell for row in rows for cell in row.values()]
        if not cells or None in cells:
            return "a cell ran out of memory" if cells else "no cell"
    if name == "sdxl":
        data = json.loads((out / "sdxl.json").read_text())
        bad = sum("error" in r for r in data["inference"]) + sum("seconds_per_step" not in r for r in data["training"])
        if bad or not data["inference"]:
            return f"{bad} cell(s) failed or not run" if bad else "no cell"
    return None


checked = []
for result in results:
    name, _, outcome = result.partition("=")
    try:
        why = unmet(name) if outcome.startswith("ok(") else None
    except (OSError, ValueError, KeyError, TypeError, ET.ParseError) as exc:  # what it wrote cannot be read
        why = f"unreadable output: {type(exc).__name__}: {exc}"
    checked.append(f"{name}=FAILED({why})" if why else result)
ran = {r.split("=")[0] for r in checked}
checked += [f"{name}=MISSING" for name in steps if name not in ran and (not only or f",{name}," in only)]
results = checked
tables, parts, device = [], [], "?"
for name in ("cli", "inference_eager_vae", "inference_eager_light", "inference_compiled_light", "training", "data",
             "train_memory", "export"):
    path = out / f"{name}.json"
    if not path.is_file():
        continue
    data = json.loads(path.read_text())
    device = data.get("device", device)
    tables.append(f"## {name}\n\n{data['table']}\n")
    if name.startswith("inference"):
        fps = {(c["pipeline"], c["setting"]): c["images_per_s"] for c in data["cells"]}
        shown = [k for k in ("1x1", "8x2") if ("ours", k) in fps]
        parts.append(f"{name.removeprefix('inference_')} FPS " + ", ".join(
            f"{k} {fps['ours', k]:.1f} (Marigold {fps['marigold', k]:.1f})" for k in shown))
    elif name == "training":
        best = max(data["cells"], key=lambda c: c["images_per_s"])
        peak = f", peak {best['peak_gib']:.1f} GiB" if best["peak_gib"] else ""
        parts.append(f"train {best['images_per_s']:.1f} img/s (batch {best['batch']}, ckpt "
                     f"{'on' if best['checkpointing'] else 'off'}{peak})")
    elif name == "data":
        parts.append(data.get("summary", "data stage measured"))
    elif name in ("cli", "export"):
        parts.append(data["summary"])
    elif name == "train_memory":
        parts.append("train memory " + ", ".join(
            f"{lever} {cell['gib']:.1f} GiB" if cell else f"{lever} out of memory"
            for lever, row in data["cells"].items() for cell in row.values()))
(out / "gpu_check.md").write_text("\n".join(tables))
print("\n".join(tables))
failed = [r.split("=")[0] for r in results if "=ok(" not in r]  # failed, timed out or skipped
verdict = f"FAILED: {', '.join(failed)}" if failed else "all steps ok"
print(f"GPU CHECK {device}: {' | '.join(parts) or 'no figures'} | goal 1x1 >= 60 FPS, paper 1x1/1x2/4x2/8x2 "
      f"11.27/10.61/5.82/3.15 | steps {' '.join(results)} | {seconds}s | {verdict}")
sys.exit(1 if failed else 0)
EOF
exit "${PIPESTATUS[0]}"
