#!/usr/bin/env bash
# One call on a bare GPU machine: install what is missing, run the GPU tests, run the benchmarks, collect figures.
#
#   (here)   dev/fetch_gpu_wheels.sh               # once: cp312 wheels of biopython and soundfile into .whl/
#            (optional) .anchor-whl/: mamba_ssm and causal-conv1d wheels built for sm_90, for side-by-side runs
#            (optional) .anchor-src/: their sdists, for the build-anchor step (dev/build_anchor.sh says how)
#   (device) bash dev/gpu_session.sh [what ...]    # what: tests | kernel-tests | bench | train | generate | memory | packed |
#                                                   #       decode-ab | some-tests | profile | synthetic-* | train-variants |
#                                                   #       induction-eval | species | species-ab |
#                                                   #       classify-fragments | sc09 | synthetic | fused-ab | packed-diag | build-anchor
#                                                   #       (default: tests bench)
#
# species / sc09 read development data from .gpudata/ (git-ignored; copy ../shared/data/dna/bacteria and
# ../shared/data/audio/fsdd_dev/recordings there and carry it): results come back as one tarball per step.
#
# Never builds inside the carried repo: the package is installed from a copy under /tmp. Results go to $OUT
# (the device tool brings them back) or ./gpu-out when OUT is unset.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-$repo/gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

# the commit of this tree, recorded by every bench report (report.environment()): MBA_COMMIT if set, else git when
# the tree is a checkout (with "-dirty" when tracked files changed), else the COMMIT file at the tree's root written
# by whoever made the tree (git rev-parse HEAD > TREE/COMMIT); "unknown" otherwise
if [ -z "${MBA_COMMIT:-}" ]; then
    if [ -e "$repo/.git" ] && MBA_COMMIT=$(git -C "$repo" rev-parse HEAD 2>/dev/null); then
        [ -z "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ] || MBA_COMMIT=$MBA_COMMIT-dirty
    elif [ -s "$repo/COMMIT" ]; then
        MBA_COMMIT=$(head -1 "$repo/COMMIT" | tr -d '[:space:]')
    else
        MBA_COMMIT=unknown
    fi
fi
export MBA_COMMIT
echo "commit $MBA_COMMIT"
# fails loudly when a bench step left no report (a timeout, a crash): copies it to $out otherwise
collect() {  # collect WHAT FILE...
    local what=$1 f missing=0; shift
    for f in "$@"; do
        if [ -f "$f" ]; then cp "$f" "$out/"; else echo "$what: no $f (timed out or failed)"; missing=1; fi
    done
    [ $missing -eq 0 ] || status=1
}

# .whl: pure packages the image lacks; .anchor-whl: mamba_ssm / causal-conv1d built for sm_90 (side-by-side runs).
# .anchor-xz: the same two anchor wheels without their CUDA extension, plus the stripped extension xz-compressed
# beside it (both wheels whole are over the device call's 64 MiB).
for wheels in .whl .anchor-whl .anchor-xz; do
    if ls "$repo/$wheels"/*.whl >/dev/null 2>&1; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "$repo/$wheels"/*.whl || exit 1
    fi
done
for packed in "$repo"/.anchor-xz/*.so.xz; do
    [ -e "$packed" ] || continue
    python3 -c "import lzma, sys; open(sys.argv[2], 'wb').write(lzma.open(sys.argv[1]).read())" \
        "$packed" "/tmp/site/$(basename "$packed" .xz)" || exit 1
done
rm -rf /tmp/src /tmp/pkg && cp -r "$repo" /tmp/src && rm -rf /tmp/src/.git /tmp/src/.whl /tmp/src/.anchor-whl /tmp/src/.anchor-xz /tmp/src/.anchor /tmp/src/.anchor-src
python3 -m pip install -q --no-deps --no-build-isolation --no-compile --target /tmp/pkg /tmp/src >/dev/null || exit 1
export PYTHONPATH=/tmp/pkg:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PATH=/tmp/pkg/bin:$PATH
export TRITON_INTERPRET=0  # the kernel test modules default it to 1 (CPU CI); real kernels here
cd /tmp  # not the repo: tests must import the installed package

python3 - <<'PY' | tee "$out/env.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(), "SMs", torch.cuda.get_device_properties(0).multi_processor_count)
PY

# the gpu-fast synthetic table from the runs under $1/synthetic-runs (nothing trained), into $1/synthetic; the
# last $2 lines of its output
gpu_fast_table() {
    mba synthetic table --preset gpu-fast --device cuda --reuse --out "$1/synthetic" --runs "$1/synthetic-runs" \
        --overwrite 2>&1 | tail -"$2"
}

what=${*:-tests bench}
status=0
for step in $what; do
    case $step in
        tests)
            python3 -m pytest -q -m gpu -p no:cacheprovider -c /tmp/src/pyproject.toml /tmp/src/tests \
                2>&1 | tee "$out/gpu_tests.txt" | tail -25
            [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
        bench)
            rm -rf /tmp/bench/scan  # no earlier call's report on a warm machine
            python3 -m mamba_bio_audio bench scan --out /tmp/bench/scan --overwrite \
                --backends "${BENCH_BACKENDS:-triton,cuda,reference}" 2>&1 | tail -20
            collect bench /tmp/bench/scan/bench_scan.json /tmp/bench/scan/bench_scan.md ;;
        species-ab)  # the species recipe's A/B: each line of ${AB_FILE:-dev/species_ab.txt} is
            # "species NAME FLAGS..." (train, then evaluate with and without --rc-average) or "pretrain NAME FLAGS..."
            r=/tmp/runs/ab; mkdir -p $r; lengths=${AB_LENGTHS:-1024,2048,4096,8192,16384,32768,65536}
            [ -d /tmp/runs/bact ] || mba species prepare --genomes "$repo/.gpudata/bacteria" --out /tmp/runs/bact \
                --split-by strain >/dev/null || { status=1; continue; }
            baseline=--baseline
            while read -r kind name flags; do
                case $kind in species|pretrain) ;; *) continue ;; esac
                t0=$(date +%s)
                if [ "$kind" = pretrain ]; then
                    # shellcheck disable=SC2086
                    mba dna pretrain --data /tmp/runs/bact --out $r/$name --device cuda $flags 2>&1 | tail -1
                else
                    # shellcheck disable=SC2086
                    mba species train --data /tmp/runs/bact --out $r/$name --device cuda $flags 2>&1 | tail -1
                    for rc in no-rc-average rc-average; do
                        mba species evaluate --checkpoint $r/$name --data /tmp/runs/bact --lengths "$lengths" \
                            --per-species 40 --out $r/$name-eval-$rc --device cuda --$rc $baseline 2>&1 | tail -9
                        baseline=--no-baseline
                    done
                fi
                echo "$name: $(( $(date +%s) - t0 )) s"
                python3 "$repo/dev/species_ab_table.py" $r > "$out/species_ab.md"
                tar czf "$out/species_ab.tar.gz" -C $r --exclude checkpoints --exclude tensorboard \
                    --exclude '*.safetensors' .
            done < "$repo/${AB_FILE:-dev/species_ab.txt}"
            cat "$out/species_ab.md" ;;
        species)  # held-out strains of 5 bacteria, lengths 2^10 .. 2^16, beside the 6-mer baseline
            r=/tmp/runs; mkdir -p $r; t0=$(date +%s)
            mba species prepare --genomes "$repo/.gpudata/bacteria" --out $r/bact --split-by strain &&
            mba species train --data $r/bact --out $r/species --length 65536 --preset paper-1.4m --batch-size 4 \
                --lr 1e-3 --max-steps 400 --warmup-min-length 1024 --warmup-stage-steps 40 --device cuda 2>&1 | tail -5 &&
            mba species evaluate --checkpoint $r/species --data $r/bact --lengths 1024,4096,16384,65536 \
                --per-species 40 --out $r/species_eval --device cuda 2>&1 | tail -15
            echo "species: $(( $(date +%s) - t0 )) s on the GPU" | tee $r/species_eval/gpu_seconds.txt
            tar czf "$out/species.tar.gz" -C $r species/config.yaml species/metrics.json species/logs species_eval ;;
        classify-fragments)  # labelled fragments (100-2,000 bases) of the 5 bacteria, held-out strains:
            # mba dna classify prepare | train | evaluate (model beside the 6-mer baseline); CLASSIFY_ARGS adds flags
            r=/tmp/runs; mkdir -p $r; t0=$(date +%s)
            python3 /tmp/src/dev/make_fragments.py "$repo/.gpudata/bacteria" $r/fragments.csv \
                --train-per-species ${FRAGMENTS_TRAIN:-5000} --test-per-species 400 &&
            mba dna classify prepare $r/fragments.csv --split-column split --out $r/frag_store 2>&1 | tail -4 &&
            mba dna classify train --data $r/frag_store --out $r/frag_run --max-minutes ${CLASSIFY_MINUTES:-3} \
                --device cuda ${CLASSIFY_ARGS:-} 2>&1 | tail -6 &&
            mba dna classify evaluate --checkpoint $r/frag_run --data $r/frag_store --out $r/frag_eval \
                --device cuda 2>&1 | tail -15 &&
            mba dna classify evaluate --checkpoint $r/frag_run --data $r/frag_store --out $r/frag_eval_rc \
                --device cuda --rc-average 2>&1 | tail -5  # both strands (fragments come from either)
            echo "classify-fragments: $(( $(date +%s) - t0 )) s on the GPU" | tee $r/frag_eval/gpu_seconds.txt
            tar czf "$out/classify_fragments.tar.gz" -C $r frag_run/config.yaml frag_run/metrics.json frag_eval \
                frag_eval_rc ;;
        sc09)  # FSDD at 8 kHz: short paper-6m training, samples, classifier, metrics
            r=/tmp/runs; mkdir -p $r; t0=$(date +%s)
            mba sc09 prepare --from-folder "$repo/.gpudata/fsdd/recordings" --out $r/fsdd --sample-rate 8000 \
                --clip-seconds 0.5 2>&1 | tail -3 &&
            mba sc09 train --data $r/fsdd --out $r/sc09 --preset paper-6m --max-steps 300 --val-every 100 \
                --device cuda 2>&1 | tail -3 &&
            mba sc09 generate --checkpoint $r/sc09 --num-samples 64 --batch-size 64 --out $r/sc09_samples \
                --device cuda 2>&1 | tail -3 &&
            mba sc09 generate --checkpoint $r/sc09 --num-samples 1 --batch-size 1 --seconds 1 --out $r/sc09_b1 \
                --device cuda 2>&1 | tail -2 &&
            mba sc09 train-classifier --data $r/fsdd --out $r/clf --preset paper --epochs 10 --device cuda 2>&1 | tail -3 &&
            mba sc09 evaluate --checkpoint $r/sc09 --data $r/fsdd --classifier $r/clf --samples $r/sc09_samples \
                --out $r/sc09_eval --device cuda 2>&1 | tail -15
            echo "sc09: $(( $(date +%s) - t0 )) s on the GPU" | tee $r/sc09_eval/gpu_seconds.txt
            tar czf "$out/sc09.tar.gz" -C $r sc09/config.yaml sc09/metrics.json sc09/logs sc09_eval \
                sc09_samples/metrics.json sc09_samples/likelihoods.tsv sc09_samples/spectrograms.png \
                sc09_samples/sample_0000.wav sc09_samples/sample_0001.wav sc09_b1/metrics.json clf/metrics.json ;;
        audio-sweep)  # test NLL against training window on the recordings store carried in .gpudata/music
            # (index.json + tokens.u8.xz, see dev/README.md): SWEEP_WINDOWS, SWEEP_TOKENS, SWEEP_BUDGET, SWEEP_ARGS
            r=/tmp/runs; mkdir -p $r; t0=$(date +%s)
            if [ ! -f $r/music/tokens.u8 ]; then
                mkdir -p $r/music && cp "$repo/.gpudata/music/index.json" "$repo/.gpudata/music/.mba-output" $r/music/ &&
                python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
                    "$repo/.gpudata/music/tokens.u8.xz" $r/music/tokens.u8 || { status=1; continue; }
            fi
            # earlier calls' runs carried in .gpudata/music/sweep/window_W/metrics.json are reused (a sweep over calls)
            # (the folder is an earlier sweep's output: its marker is written when only the runs' files were carried)
            if [ -d "$repo/.gpudata/music/sweep" ] && [ ! -d $r/sweep ]; then
                cp -r "$repo/.gpudata/music/sweep" $r/sweep
                [ -f $r/sweep/.mba-output ] || echo "audio context-sweep" > $r/sweep/.mba-output
            fi
            # every 15 s, the finished rows to $out/audio_sweep_partial/ (a call cut by its limit still returns them)
            ( while sleep 15; do mkdir -p "$out/audio_sweep_partial"; cp $r/sweep/sweep.* "$out/audio_sweep_partial/" 2>/dev/null
                for d in $r/sweep/window_*; do [ -f "$d/metrics.json" ] && cp "$d/metrics.json" \
                    "$out/audio_sweep_partial/$(basename "$d")_metrics.json"; done; done ) &
            copier=$!
            # a sweep cut by SWEEP_SECONDS prints where it was (SIGABRT: the fault handler's Python traceback)
            # shellcheck disable=SC2086
            PYTHONFAULTHANDLER=1 timeout -s ABRT -k 15 ${SWEEP_SECONDS:-540} mba audio context-sweep --data $r/music --out $r/sweep \
                --windows ${SWEEP_WINDOWS:-8192,32768,131072,262144,524288} --tokens-per-batch ${SWEEP_TOKENS:-524288} \
                ${SWEEP_BUDGET:---max-minutes 0.9} --device cuda ${SWEEP_ARGS:-} 2>&1 | grep -v "Epoch\|Validation\|it/s" | tee "$out/audio_sweep_log.txt" | tail -25
            kill $copier 2>/dev/null
            echo "audio-sweep: $(( $(date +%s) - t0 )) s" | tee -a "$out/audio_sweep_seconds.txt"
            tar czf "$out/audio_sweep.tar.gz" -C $r --exclude='*.ckpt' --exclude='*.safetensors' --exclude=tensorboard sweep ;;
        audio-continue)  # continue a test recording with the sweep's model at CONTINUE_WINDOW: a 4 s prompt cut
            # from the store's first test file, CONTINUE_SECONDS of new audio, CONTINUE_SAMPLES clips, listening page
            r=/tmp/runs; t0=$(date +%s)
            python3 - "$r/music" "$r/prompt.wav" <<'PY' || { status=1; continue; }
import sys
import numpy as np, soundfile as sf
from mamba_bio_audio.data_prep.store import TokenStore
from mamba_bio_audio.data_prep.audio.mulaw import decode
store = TokenStore(sys.argv[1])
rate = int(store.meta["sample_rate"])
i = next(k for k, r in enumerate(store.records) if r["split"] == "test")
tokens = store.window(i, 60 * rate, 4 * rate)  # 4 s from the first test file's minute 1
sf.write(sys.argv[2], decode(tokens, store.meta["encoding"]).numpy().astype(np.float32), rate)
print("prompt:", store.records[i]["file"], "60-64 s")
PY
            mba audio generate --checkpoint $r/sweep/window_${CONTINUE_WINDOW:-131072} --prompt $r/prompt.wav \
                --seconds ${CONTINUE_SECONDS:-8} --num-samples ${CONTINUE_SAMPLES:-4} --batch-size ${CONTINUE_SAMPLES:-4} \
                --out $r/continued --device cuda ${CONTINUE_ARGS:-} 2>&1 | grep -v "it/s" | tail -4
            echo "audio-continue: $(( $(date +%s) - t0 )) s" | tee -a "$out/audio_sweep_seconds.txt"
            tar czf "$out/audio_continue.tar.gz" -C $r continued prompt.wav ;;
        memory)  # the d_model 256 x 8 classifier at 2^20 and 2^22, checkpoint levels 0, 1, 2
            timeout ${MEMORY_SECONDS:-300} mba bench memory --lengths ${MEMORY_LENGTHS:-1048576,4194304} \
                --checkpoint-level ${MEMORY_LEVELS:-0,1,2} --out /tmp/bench/memory --overwrite 2>&1 | tail -12
            cp /tmp/bench/memory/bench_memory.* "$out/" ;;
        packed)  # packed vs padded batches (lengths log-uniform 200-5,000), and the scan with/without seq_idx
            timeout ${PACKED_SECONDS:-420} mba bench packed --out /tmp/bench/packed --overwrite ${PACKED_ARGS:-} \
                2>&1 | tail -20
            cp /tmp/bench/packed/bench_packed.* "$out/" ;;
        train)  # whole-model training step: ours (unfused and fused inner: mamba_ssm's fast path recomputes as the
            # fused one does), mamba_ssm (when installed), the SDPA Transformer; TRAIN_FUSED_INNER, TRAIN_ROUNDS
            # (rounds in alternating model order), TRAIN_ARGS (more flags; a flag there wins), TRAIN_SECONDS
            rm -rf /tmp/bench/train
            # shellcheck disable=SC2086
            timeout ${TRAIN_SECONDS:-540} python3 -m mamba_bio_audio bench train --out /tmp/bench/train --overwrite \
                --fused-inner "${TRAIN_FUSED_INNER:-off,triton}" --rounds "${TRAIN_ROUNDS:-1}" ${TRAIN_ARGS:-} \
                2>&1 | tail -16
            collect train /tmp/bench/train/bench_train.json /tmp/bench/train/bench_train.md /tmp/bench/train/bench_train.png ;;
        train-variants)  # our Mamba's training step under each '|'-separated flag set of TRAIN_VARIANTS (default:
            # eager, fused inner, fused inner keeping every 16th chunk state with softplus in the scan kernels, each
            # again with --cuda-graphs), beside mamba_ssm in the same call when it imports (graphed too with
            # --cuda-graphs; VARIANT_MODELS overrides), at TRAIN_SHAPES, one report per variant under
            # $out/train_variants/vK/, a summary in train_variants/summary.txt; a variant with no report (cut by
            # TRAIN_VARIANT_SECONDS) is named there and fails the step
            v=0; t0=$(date +%s); mkdir -p "$out/train_variants"
            models=mamba; python3 -c "import mamba_ssm.models.mixer_seq_simple" 2>/dev/null && models=mamba,mamba_ssm
            models=${VARIANT_MODELS:-$models}
            lean="--fused-inner triton --fused-save-every 16 --scan-softplus kernel"
            IFS='|' read -r -a variants <<< "${TRAIN_VARIANTS:-| --fused-inner triton| $lean| --cuda-graphs| --cuda-graphs --fused-inner triton| --cuda-graphs $lean}"
            for flags in "${variants[@]}"; do
                v=$((v + 1))
                echo "== variant $v:${flags:- (eager, unfused)} (models $models)" | tee -a "$out/train_variants/summary.txt"
                rm -rf /tmp/bench/train_v$v
                # shellcheck disable=SC2086
                timeout ${TRAIN_VARIANT_SECONDS:-240} python3 -m mamba_bio_audio bench train --models $models \
                    --shapes "${TRAIN_SHAPES:-8,2048;1,65536}" --out /tmp/bench/train_v$v --overwrite $flags 2>&1 \
                    | grep -E "^\| (Mamba|mamba_ssm)|tokens/s|Error|error" | tail -8 | tee -a "$out/train_variants/summary.txt"
                mkdir -p "$out/train_variants/v$v"
                if [ -f /tmp/bench/train_v$v/bench_train.json ]; then
                    cp /tmp/bench/train_v$v/bench_train.json /tmp/bench/train_v$v/bench_train.md "$out/train_variants/v$v/"
                else
                    echo "variant $v: NO REPORT (timed out after ${TRAIN_VARIANT_SECONDS:-240} s or failed)" \
                        | tee -a "$out/train_variants/summary.txt"
                    status=1
                fi
            done
            echo "train-variants: $(( $(date +%s) - t0 )) s" | tee -a "$out/train_variants/summary.txt" ;;
        generate)  # decoding tokens/s at batch 1 and 64 (ours, mamba_ssm, the Transformer eager and graphed), then
            # apart, the largest batch that fits, ours beside the Transformer (eager and graphed), each with its own
            # limit (GENERATE_SECONDS, LARGEST_SECONDS) and log, so that a run cut by its limit loses only itself:
            # on 2026-12-07 one 270-s run of both lost every row. GENERATE_ARGS / LARGEST_ARGS add flags.
            rm -rf /tmp/bench/generate /tmp/bench/generate_largest
            # shellcheck disable=SC2086
            timeout ${GENERATE_SECONDS:-300} python3 -m mamba_bio_audio bench generate ${GENERATE_ARGS:-} \
                --out /tmp/bench/generate --overwrite 2>&1 | tee "$out/generate_log.txt" | tail -16
            collect generate /tmp/bench/generate/bench_generate.json /tmp/bench/generate/bench_generate.md
            if [ "${LARGEST_SECONDS:-400}" -gt 0 ]; then
                # shellcheck disable=SC2086
                timeout ${LARGEST_SECONDS:-400} python3 -m mamba_bio_audio bench generate --models mamba,transformer \
                    --batch-sizes 1 --repeats 1 --largest-batch ${LARGEST_ARGS:---largest-new-tokens 1024} \
                    --out /tmp/bench/generate_largest --overwrite 2>&1 | tee "$out/generate_largest_log.txt" | tail -12
                for f in json md; do
                    [ -f /tmp/bench/generate_largest/bench_generate.$f ] && \
                        cp /tmp/bench/generate_largest/bench_generate.$f "$out/bench_generate_largest.$f"
                done
                [ -f "$out/bench_generate_largest.json" ] || { echo "generate: no largest-batch report"; status=1; }
            fi ;;
        variants)  # the scan under several tunings (chooses the defaults)
            timeout 400 python3 /tmp/src/dev/scan_variants.py --out "$out" ${VARIANT_ARGS:-} 2>&1 | tail -40 ;;
        decode-variants)  # one block's decode step, unfused / inner / block-fused at several rows per program
            timeout 200 python3 /tmp/src/dev/decode_variants.py --out "$out" ${DECODE_VARIANT_ARGS:-} 2>&1 | tail -40 ;;
        decode-ab)  # our decode at batch 1 .. 16 four ways (DECODE_AB_MODES): block-fused with out_proj inside
            # and programmatic dependent launches (block-out) or neither (block), inner-fused (norm and in_proj
            # apart), unfused
            for mode in ${DECODE_AB_MODES:-block-out block inner unfused}; do
                case $mode in
                    block-out) settings="MBA_FUSED_BLOCK_DECODE_MAX_BATCH=16 MBA_FUSED_DECODE_MAX_BATCH=16 MBA_FUSED_OUT_PROJ_MAX_BATCH=16 MBA_DECODE_PDL=1" ;;
                    block) settings="MBA_FUSED_BLOCK_DECODE_MAX_BATCH=16 MBA_FUSED_DECODE_MAX_BATCH=16 MBA_FUSED_OUT_PROJ_MAX_BATCH=0 MBA_DECODE_PDL=0" ;;
                    inner) settings="MBA_FUSED_BLOCK_DECODE_MAX_BATCH=0 MBA_FUSED_DECODE_MAX_BATCH=16" ;;
                    unfused) settings="MBA_FUSED_BLOCK_DECODE_MAX_BATCH=0 MBA_FUSED_DECODE_MAX_BATCH=0" ;;
                esac
                echo "== $mode ($settings)"
                env $settings timeout 150 python3 -m mamba_bio_audio bench generate --models mamba \
                    --batch-sizes ${DECODE_AB_BATCHES:-1,2,4,8,16} --out "$out/decode_ab/$mode" 2>&1 | tail -12
            done
            tar czf "$out/decode_ab.tar.gz" -C "$out" decode_ab && rm -rf "$out/decode_ab" ;;
        decode-tests)  # CUDA-graph decoding of MambaLM and the audio model
            python3 -m pytest -q -m gpu -p no:cacheprovider -c /tmp/src/pyproject.toml /tmp/src/tests/generation/test_decoder.py \
                /tmp/src/tests/models/test_sashimi.py 2>&1 | tee "$out/decode_tests.txt" | tail -8
            [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
        conv-variants)  # the Triton causal conv's launch tunings beside causal-conv1d (dev/conv_variants.py;
            # CONV_VARIANT_ARGS, e.g. --shapes / --configs)
            timeout 240 python3 /tmp/src/dev/conv_variants.py --out "$out/conv_variants" ${CONV_VARIANT_ARGS:-} 2>&1 \
                | tail -26 ;;
        launch-overhead)  # host time per call of the scan, conv and norm wrappers at tiny shapes, with and
            # without Triton's launcher (dev/launch_overhead.py), mamba_ssm's beside
            timeout 150 python3 /tmp/src/dev/launch_overhead.py --out "$out/launch_overhead" 2>&1 | tail -14 ;;
        profile)  # the 90.7M model's training step by CUDA kernel (where the time goes), ours beside mamba_ssm
            # (PROFILE_ARGS, e.g. --cuda-graphs: both models' steps captured; kernels on the GPU, kernel and graph
            # launches from the host are counted apart)
            for shape in ${PROFILE_SHAPES:-8x2048 1x65536}; do
                for model in ${PROFILE_MODELS:-mamba mamba_ssm}; do
                    timeout 150 python3 /tmp/src/dev/profile_step.py --out "$out/profiles" --model $model \
                        --batch ${shape%x*} --seqlen ${shape#*x} ${PROFILE_ARGS:-} 2>&1 | tail -2
                done
            done
            tar czf "$out/profiles.tar.gz" -C "$out" profiles && rm -rf "$out/profiles" ;;
        kernel-tests)  # only the kernel and model GPU tests (faster than "tests")
            python3 -m pytest -q -m gpu -p no:cacheprovider -c /tmp/src/pyproject.toml /tmp/src/tests/kernels \
                /tmp/src/tests/models/test_gpu_model.py /tmp/src/tests/generation/test_decoder.py 2>&1 | tee "$out/gpu_tests.txt" | tail -15
            [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
        fused-ab)  # training step time and peak memory, MambaConfig.fused_inner off vs triton (90.7M model), then
            # the same with the fused scan keeping every 4th chunk state
            python3 /tmp/src/dev/fused_inner_ab.py "$out/fused_inner_ab.json" 2>&1 | tail -4
            MBA_FUSED_SAVE_EVERY=4 python3 /tmp/src/dev/fused_inner_ab.py "$out/fused_inner_ab_save4.json" 2>&1 | tail -4 ;;
        build-anchor)  # mamba_ssm + causal-conv1d from the sdists in .anchor-src/ for sm_90 (~7 min), installed into
            # /tmp/site for the steps after it, and returned as $OUT/anchor/anchor-xz.tar.part-* (unpack into .anchor-xz/ and
            # carry that later: dev/build_anchor.sh)
            timeout ${ANCHOR_SECONDS:-560} bash /tmp/src/dev/build_anchor.sh "$repo/.anchor-src" "$out/anchor" 2>&1 \
                | grep -v "^  \|warning" | tail -12
            [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
        packed-diag)  # #17: the packed SaShiMi test's gradient gap over seeds, backends, TF32 off, a smaller noise
            timeout 240 python3 /tmp/src/dev/packed_sashimi_diag.py "$out/packed_sashimi_diag.json" 2>&1 | tail -30 ;;
        some-tests)  # only the GPU tests of TEST_FILES (paths under tests/)
            python3 -m pytest -q -m gpu -p no:cacheprovider -c /tmp/src/pyproject.toml \
                $(for f in ${TEST_FILES:-kernels}; do echo /tmp/src/tests/$f; done) 2>&1 | tee "$out/gpu_tests_some.txt" | tail -8
            [ "${PIPESTATUS[0]}" -eq 0 ] || status=1 ;;
        install) ;;  # only the installation above (then run commands with PYTHONPATH=/tmp/pkg:/tmp/site)
        multi-gpu)  # 2+ GPUs: context parallelism (exactness + 2^22 bench) and the DDP loss curve
            timeout 330 mba bench context-parallel --nproc-per-node "${GPUS:-2}" --check --single \
                --out "$out/context_parallel" 2>&1 | tail -25
            timeout 240 mba bench ddp --accelerator gpu --devices "${GPUS:-2}" --steps 50 \
                --out "$out/ddp_loss_curve" 2>&1 | tail -8 ;;
        synthetic-copy)  # only the table's first row (selective copying, Mamba S6, gpu-fast) with the whole limit
            r=/tmp/runs; mkdir -p $r; t0=$(date +%s)
            mba synthetic selective-copy --preset gpu-fast --layer S6 --arch mamba --device cuda \
                --max-minutes ${SYNTHETIC_MINUTES:-8} --out $r/synthetic-runs/selective_copy_mamba_S6 2>&1 | tail -6
            echo "synthetic-copy: $(( $(date +%s) - t0 )) s on the GPU"
            tar czf "$out/synthetic-runs.tar.gz" -C $r synthetic-runs ;;
        synthetic-induction)  # only the table's induction-heads row (gpu-fast) with the whole limit
            r=/tmp/runs; mkdir -p $r; t0=$(date +%s)
            mba synthetic induction-heads --preset gpu-fast --device cuda --max-minutes ${SYNTHETIC_MINUTES:-8} \
                --out $r/synthetic-runs/induction_heads_mamba_S6 2>&1 | grep -v "it/s" | tail -20
            echo "synthetic-induction: $(( $(date +%s) - t0 )) s on the GPU"
            tar czf "$out/synthetic-runs-induction.tar.gz" -C $r synthetic-runs ;;
        synthetic-continue)  # continue the induction-heads row (carried in .gpudata/synthetic-runs/
            # induction_heads_mamba_S6_part1) at CONTINUE_LR, then the table from the carried runs (nothing retrained)
            r=/tmp/runs; mkdir -p $r; t0=$(date +%s)
            cp -r "$repo/.gpudata/synthetic-runs" $r/
            mba synthetic induction-heads --preset gpu-fast --device cuda --max-minutes ${SYNTHETIC_MINUTES:-8} \
                --lr ${CONTINUE_LR:-1e-3} --init-from $r/synthetic-runs/${CONTINUE_FROM:-induction_heads_mamba_S6_part1}/model \
                ${CONTINUE_ARGS:-} --out $r/synthetic-runs/induction_heads_mamba_S6 2>&1 | grep -v "it/s" | tail -20
            gpu_fast_table $r 3
            echo "synthetic: $(( $(date +%s) - t0 )) s on the GPU" | tee $r/synthetic/gpu_seconds.txt
            tar czf "$out/synthetic.tar.gz" -C $r synthetic $(cd $r && ls -d synthetic-runs/*/metrics.json \
                synthetic-runs/*/config.yaml synthetic-runs/*/logs synthetic-runs/*/model 2>/dev/null) ;;
        synthetic-resume)  # resume the induction-heads run carried in .gpudata/synthetic-runs/${RESUME_FROM} (its
            # last checkpoint: weights, optimizer state, step, data position) as the table's row, then the table
            # (SYNTHETIC_MINUTES is the whole run's budget: the earlier parts' training time counts)
            r=/tmp/runs; mkdir -p $r; t0=$(date +%s)
            cp -r "$repo/.gpudata/synthetic-runs" $r/
            row=$r/synthetic-runs/induction_heads_mamba_S6
            rm -rf $row && cp -r $r/synthetic-runs/${RESUME_FROM:-induction_heads_mamba_S6_part1} $row
            mba synthetic induction-heads --preset gpu-fast --device cuda --max-minutes ${SYNTHETIC_MINUTES:-8} \
                --resume --max-steps ${RESUME_MAX_STEPS:-60000} ${RESUME_ARGS:-} --out $row 2>&1 | grep -v "it/s" | tail -20
            gpu_fast_table $r 3
            echo "synthetic: $(( $(date +%s) - t0 )) s on the GPU" | tee $r/synthetic/gpu_seconds.txt
            tar czf "$out/synthetic.tar.gz" -C $r synthetic $(cd $r && ls -d synthetic-runs/*/metrics.json \
                synthetic-runs/*/config.yaml synthetic-runs/*/logs synthetic-runs/induction_heads_mamba_S6/model \
                synthetic-runs/induction_heads_mamba_S6/checkpoints/last.ckpt 2>/dev/null) ;;
        synthetic-sweep)  # runs of one task (SWEEP_TASK, default induction-heads) side by side on one GPU (a small
            # model's step is host-bound: the GPU idles most of it), each with SWEEP_MINUTES. SWEEP: "name|from|args;..."
            # (from: a run folder carried in .gpudata/synthetic-runs to copy and --resume, or -; args: extra flags)
            r=/tmp/runs/sweep; mkdir -p $r; t0=$(date +%s); pids=()
            IFS=';' read -ra entries <<< "${SWEEP:?SWEEP=name|from|args;...}"
            for entry in "${entries[@]}"; do
                IFS='|' read -r name from args <<< "$entry"
                resume=""
                if [ "$from" != "-" ]; then cp -r "$repo/.gpudata/synthetic-runs/$from" $r/$name; resume=--resume; fi
                OMP_NUM_THREADS=2 mba synthetic ${SWEEP_TASK:-induction-heads} --preset gpu-fast --device cuda \
                    --max-minutes ${SWEEP_MINUTES:-7.5} $resume $args --out $r/$name > $r/$name.log 2>&1 &
                pids+=($!)
            done
            for pid in "${pids[@]}"; do wait $pid; done
            for entry in "${entries[@]}"; do n=${entry%%|*}; echo "== $n"; grep -v "it/s" $r/$n.log | tail -18; done
            echo "synthetic-sweep: $(( $(date +%s) - t0 )) s on the GPU" | tee $r/gpu_seconds.txt
            tar czf "$out/synthetic-sweep.tar.gz" -C /tmp/runs --exclude=tensorboard sweep ;;
        synthetic-table)  # only the table, from the runs carried in .gpudata/synthetic-runs (nothing trained)
            r=/tmp/runs; mkdir -p $r; cp -r "$repo/.gpudata/synthetic-runs" $r/
            gpu_fast_table $r 30
            tar czf "$out/synthetic-table.tar.gz" -C $r synthetic ;;
        induction-eval)  # mba synthetic evaluate on a carried run's model: EVAL_RUN (a folder name in
            # .gpudata/synthetic-runs), EVAL_LENGTHS (log2, comma-separated), EVAL_SAMPLES, EVAL_FIRST; EVAL_TAG names
            # the report folder under $OUT
            mba synthetic evaluate "$repo/.gpudata/synthetic-runs/${EVAL_RUN:?}/model" \
                --out "$out/induction_eval${EVAL_TAG:-}" --log2-lengths ${EVAL_LENGTHS:-20} \
                --samples ${EVAL_SAMPLES:-1024} --first ${EVAL_FIRST:-128} 2>&1 | tail -8 ;;
        synthetic-fast)  # the paper's synthetic-task table with our short recipe (gpu-fast), within a time limit;
            # rows already trained (synthetic-copy, carried back in .gpudata/synthetic-runs) are reused
            r=/tmp/runs; mkdir -p $r; t0=$(date +%s)
            if [ -d "$repo/.gpudata/synthetic-runs" ]; then cp -r "$repo/.gpudata/synthetic-runs" $r/; fi
            mba synthetic table --preset gpu-fast --device cuda --max-minutes ${SYNTHETIC_MINUTES:-5.5} --reuse \
                --out $r/synthetic --runs $r/synthetic-runs 2>&1 | tail -25
            echo "synthetic: $(( $(date +%s) - t0 )) s on the GPU" | tee $r/synthetic/gpu_seconds.txt
            tar czf "$out/synthetic.tar.gz" -C $r synthetic $(cd $r && ls -d synthetic-runs/*/metrics.json \
                synthetic-runs/*/config.yaml synthetic-runs/*/logs 2>/dev/null) ;;
        synthetic)
            r=/tmp/runs; mkdir -p $r; t0=$(date +%s)
            timeout ${SYNTHETIC_SECONDS:-360} mba synthetic table --out $r/synthetic --runs $r/synthetic-runs \
                --preset paper --max-steps ${SYNTHETIC_STEPS:-1500} --device cuda 2>&1 | tail -25
            echo "synthetic: $(( $(date +%s) - t0 )) s on the GPU" | tee $r/synthetic/gpu_seconds.txt
            tar czf "$out/synthetic.tar.gz" -C $r synthetic $(cd $r && ls -d synthetic-runs/*/metrics.json 2>/dev/null) ;;
        *)
            echo "unknown step $step"; status=2 ;;
    esac
done
exit $status
