#!/usr/bin/env bash
# scripts/build-cuda.sh - build lime-bench's `harness` with candle's CUDA backend on a machine
# with no GPU and no CUDA toolkit, for an H100/H200 (compute capability 9.0, driver 580 = CUDA 13.0),
# and leave a folder to carry to the GPU machine.
#
# Usage, from the workspace root:
#   scripts/build-cuda.sh                 # = cargo build -p harness --release --features cuda
#   scripts/build-cuda.sh [cargo build args...]   (other packages/profiles; no dist/ folder then)
#
# Adapted from the team's recipe (shared/gpu/build-cuda.sh; see the README's GPU section):
#   1. pip-downloads the pinned CUDA 13.0.2 wheels (hash-checked) into
#      $LIME_CUDA_CACHE/wheels (default ~/.cache/lime-bench-cuda);
#   2. unpacks them into $LIME_CUDA_CACHE/toolkit-13.0 laid out like a CUDA toolkit (bin/nvcc,
#      include/, lib/, lib64 -> lib, nvvm/), adds the unversioned lib*.so links the linker
#      needs, and builds a link-only stub lib/stubs/libcuda.so (SONAME libcuda.so.1) from the
#      driver API names in the toolkit's cuda.h;
#   3. runs `cargo build` with CUDA_COMPUTE_CAP=90 and the env vars that cudarc's and
#      candle-kernels' (cudaforge) build scripts read, into CARGO_TARGET_DIR (default
#      target/cuda, so the CPU build in target/ is left alone);
#   4. copies the binary and scripts/gpu-env.sh into dist/gpu/ (the folder to carry) and prints
#      how to run it on the GPU machine.
#
# Env: LIME_CUDA_CACHE (cache dir), LIME_PYTHON (python with pip; default python3),
# CUDA_COMPUTE_CAP (default 90 -> sm_90a code), CUDAFORGE_THREADS (parallel nvcc jobs; default
# nproc), CARGO_TARGET_DIR (default target/cuda).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$SCRIPT_DIR/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda}"
if (($# == 0)); then
    set -- -p harness --release --features cuda
    DIST=1
else
    DIST=0
fi
CACHE="${LIME_CUDA_CACHE:-$HOME/.cache/lime-bench-cuda}"
WHEEL_DIR="$CACHE/wheels"
TOOLKIT="$CACHE/toolkit-13.0"
PY="${LIME_PYTHON:-python3}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"

# The CUDA 13.0.2 component set (the pins of PyPI's cuda-toolkit==13.0.2, the
# same set torch 2.11/2.12 install). nvcc must be 13.0.x: driver 580 supports
# CUDA <= 13.0 and rejects PTX from a newer nvcc (PTX ISA > 9.0).
REQUIREMENTS='nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-nvrtc==13.0.88 --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvidia-cublas==13.1.0.3 --hash=sha256:ee8722c1f0145ab246bccb9e452153b5e0515fd094c3678df50b2a0888b8b171
nvidia-curand==10.4.0.35 --hash=sha256:1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc'
# Bumped whenever the toolkit layout/stub recipe below changes.
RECIPE_VERSION=1

log() { printf '[build-cuda] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ "$(uname -s)-$(uname -m)" == Linux-x86_64 ]] || die "only Linux x86_64 is supported"
[[ -f Cargo.toml ]] || die "run this from the root of a cargo workspace (no Cargo.toml in $PWD)"
command -v cargo >/dev/null || die "cargo not found"
command -v cc >/dev/null || die "a C compiler (cc) is needed for the libcuda link stub"
command -v g++ >/dev/null || die "g++ is needed: nvcc compiles candle-kernels' host code with gcc/g++"
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY -m pip does not work (set LIME_PYTHON)"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 || die "cannot lock $CACHE/.lock"

stamp_text() { printf 'recipe=%s\n%s\n' "$RECIPE_VERSION" "$REQUIREMENTS"; }

# ---- 1. download ---------------------------------------------------------
fetch_wheels() {
    if [[ -f "$WHEEL_DIR/.complete" ]] && cmp -s "$WHEEL_DIR/.complete" <(stamp_text); then
        return 0
    fi
    mkdir -p "$WHEEL_DIR"
    printf '%s\n' "$REQUIREMENTS" >"$WHEEL_DIR/requirements.txt"
    log "downloading CUDA 13.0.2 wheels (~650 MB) into $WHEEL_DIR"
    "$PY" -m pip download --disable-pip-version-check --no-cache-dir --no-deps --only-binary=:all: \
        --require-hashes -r "$WHEEL_DIR/requirements.txt" -d "$WHEEL_DIR" >&2 \
        || die "pip download failed"
    stamp_text >"$WHEEL_DIR/.complete"
}

# ---- 2. toolkit ----------------------------------------------------------
# Unpack nvidia/cu13/* of each pinned wheel into $1, keeping the exec bits
# (zipfile.extract drops them). Skips files nothing here uses.
unpack_wheels() {
    "$PY" - "$1" "$WHEEL_DIR" "$WHEEL_DIR/requirements.txt" <<'PYEOF'
import os, re, shutil, sys, zipfile
dest, wheel_dir, reqs = sys.argv[1], sys.argv[2], sys.argv[3]
prefix = "nvidia/cu13/"
skip = re.compile(r"^(\.metadata/|lib/cmake/|lib/libnvblas\.|lib/.*\.alt\.so)")
files = os.listdir(wheel_dir)
for line in open(reqs):
    name, version = line.split()[0].split("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    whl = [f for f in files if f.startswith(stem) and f.endswith(".whl")]
    if len(whl) != 1:
        sys.exit(f"expected one wheel for {name}=={version} in {wheel_dir}, found {whl}")
    with zipfile.ZipFile(os.path.join(wheel_dir, whl[0])) as z:
        for info in z.infolist():
            if not info.filename.startswith(prefix) or info.is_dir():
                continue
            rel = info.filename[len(prefix):]
            if skip.match(rel):
                continue
            out = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(out, mode if mode else 0o644)
PYEOF
}

# Link-only stand-in for the driver library. cudarc is built by candle with
# `dynamic-linking`, so the binary links -lcuda (DT_NEEDED libcuda.so.1); no
# wheel ships libcuda. Every function of the CUDA 13.0 driver API (names taken
# from cuda.h as preprocessed in its plain, per-thread-stream and legacy-name
# variants, plus the PFN_* typedef headers) returns CUDA_ERROR_STUB_LIBRARY (34).
# On the GPU machine the real driver's libcuda.so.1 is used instead.
make_cuda_stub() {
    local root="$1" d="$1/lib/stubs"
    mkdir -p "$d"
    {
        for def in "" -DCUDA_API_PER_THREAD_DEFAULT_STREAM -D__CUDA_API_VERSION_INTERNAL; do
            # shellcheck disable=SC2086
            cc -E -P $def -I"$root/include" "$root/include/cuda.h" \
                | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | grep -oE '^cu[A-Za-z0-9_]*'
        done
        cat "$root/include/cudaTypedefs.h" "$root/include/cudaProfilerTypedefs.h" \
            | grep -oE '\bPFN_cu[A-Za-z0-9_]+' | sed -E 's/^PFN_//; s/_v[0-9]{4,}(_pt[a-z]+)?$//'
    } | sort -u >"$d/libcuda.symbols"
    local n
    n=$(wc -l <"$d/libcuda.symbols")
    ((n > 400)) || die "only $n driver API names found in cuda.h; stub generation broken"
    {
        echo '/* Generated by build-cuda.sh: link-time stub of libcuda.so.1, never to be loaded on a GPU machine. */'
        echo '#define STUB(name) int name(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }'
        sed 's/.*/STUB(&)/' "$d/libcuda.symbols"
    } >"$d/libcuda_stub.c"
    cc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$d/libcuda.so" "$d/libcuda_stub.c"
    ln -sf libcuda.so "$d/libcuda.so.1"
}

assemble_toolkit() {
    if [[ -f "$TOOLKIT/.complete" ]] && cmp -s "$TOOLKIT/.complete" <(stamp_text) \
        && [[ -x "$TOOLKIT/bin/nvcc" && -f "$TOOLKIT/lib/stubs/libcuda.so" ]]; then
        return 0
    fi
    local tmp="$TOOLKIT.tmp.$$"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    log "assembling toolkit in $TOOLKIT"
    unpack_wheels "$tmp" || die "unpacking wheels failed"
    ln -s lib "$tmp/lib64"   # nvcc.profile and cudaforge look in lib64
    local so
    for so in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
        [[ -f "$tmp/lib/$so" ]] || die "missing $so in the wheels"
        ln -s "$so" "$tmp/lib/${so%.so.*}.so"   # -lcudart etc. need lib*.so
    done
    make_cuda_stub "$tmp"
    "$tmp/bin/nvcc" --version | grep -q 'release 13\.0,' || die "nvcc in $tmp is not release 13.0"
    rm -rf "$TOOLKIT"
    mv "$tmp" "$TOOLKIT"
    stamp_text >"$TOOLKIT/.complete"
}

fetch_wheels
assemble_toolkit
flock -u 9

# ---- 3. cargo build ------------------------------------------------------
# cudarc (dynamic-linking): runs `nvcc --version` from PATH to pick its CUDA
#   API version (pinned here by CUDARC_CUDA_VERSION) and adds link-search dirs
#   lib, lib/stubs, lib64, ... under CUDA_HOME/CUDA_PATH/CUDA_ROOT/
#   CUDA_TOOLKIT_ROOT_DIR.
# candle-kernels (cudaforge): nvcc from $NVCC (else PATH, else CUDA_HOME/bin),
#   arch from CUDA_COMPUTE_CAP (else nvidia-smi, absent here), host compiler
#   from NVCC_CCBIN if set (else nvcc's default, gcc on PATH), parallel nvcc
#   jobs from CUDAFORGE_THREADS.
export PATH="$TOOLKIT/bin:$PATH"
export NVCC="$TOOLKIT/bin/nvcc"
export CUDA_HOME="$TOOLKIT" CUDA_PATH="$TOOLKIT" CUDA_ROOT="$TOOLKIT" CUDA_TOOLKIT_ROOT_DIR="$TOOLKIT"
export CUDARC_CUDA_VERSION=13000
# candle-kernels asks for -lcudart without a search dir of its own.
export LIBRARY_PATH="$TOOLKIT/lib:$TOOLKIT/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
# cudaforge runs nvcc on half the cores by default (1 of 2 here), while the
# rest of the build waits for candle-kernels; use them all.
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"

json_out=""
case " $* " in
*" --message-format"*) ;;
*) json_out="$(mktemp)"; trap 'rm -f "$json_out"' EXIT ;;
esac

log "cargo build $* (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, toolkit $TOOLKIT)"
start=$SECONDS
if [[ -n "$json_out" ]]; then
    cargo build --message-format=json-render-diagnostics "$@" >"$json_out"
else
    cargo build "$@"
    log "built in $((SECONDS - start)) s (custom --message-format: not listing executables)"
    exit 0
fi
log "built in $((SECONDS - start)) s"

# ---- 4. report -----------------------------------------------------------
mapfile -t exes < <("$PY" - "$json_out" <<'PYEOF'
import json, os, sys
seen = []
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable") if m.get("reason") == "compiler-artifact" else None
    if exe and exe not in seen:
        seen.append(exe)
for exe in seen:
    print(os.path.relpath(exe))
PYEOF
)

if ((${#exes[@]} == 0)); then
    log "no executable was built by: cargo build $*"
    exit 0
fi
echo
echo "== built executables (relative to $PWD):"
for exe in "${exes[@]}"; do
    size=$(stat -c %s "$exe")
    printf '  %s  (%s bytes, %s MiB)\n' "$exe" "$size" "$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }')"
    ((size <= 64 * 1048576)) || echo "  WARNING: larger than the 64 MiB that may travel to the GPU machine"
    needed=$(readelf -d "$exe" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')
    echo "    needs: $needed"
    targets=$({ grep -aoE '\.target sm_[0-9]+[af]?' "$exe" || true; } | sort | uniq -c | awk '{printf "%s x%s; ", $3, $1}')
    if [[ -n "$targets" ]]; then echo "    embedded PTX: $targets"; fi
done
run_exe="${exes[0]}"
if ((DIST)); then
    # The folder to carry: the binary and the script that sets its library path there.
    rm -rf dist/gpu.tmp && mkdir -p dist/gpu.tmp
    cp "${exes[0]}" dist/gpu.tmp/harness
    cp "$SCRIPT_DIR/gpu-env.sh" dist/gpu.tmp/gpu-env.sh
    rm -rf dist/gpu && mv dist/gpu.tmp dist/gpu
    run_exe=dist/gpu/harness
    echo
    echo "== carry dist/gpu/ ($(du -sh dist/gpu | cut -f1)): harness + gpu-env.sh"
fi
cat <<EOF

== on the GPU machine (from the workspace root), either
  source scripts/gpu-env.sh $run_exe
  $run_exe check-device --device cuda     # the CUDA test subset: every model vs the CPU f64 reference
  $run_exe --task mqar --device cuda ...
== or set the library path by hand (python3 = the interpreter torch is installed in):
  export LD_LIBRARY_PATH="\$(python3 -c 'import glob, os, nvidia; print(":".join(sorted(d for p in nvidia.__path__ for d in glob.glob(os.path.join(p, "*", "lib")))))')\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
  (never put $TOOLKIT/lib/stubs on it there: its libcuda.so.1 is a stub that fails every call)
EOF
