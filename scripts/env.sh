# Sourced by the other scripts: where caches live and how binaries find libtorch.
# Build caches stay outside the clone so repeated runs are incremental.
OUTLOUD_CACHE="${OUTLOUD_CACHE:-$HOME/.cache/outloud}"
OUTLOUD_VENV="$OUTLOUD_CACHE/venv"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$OUTLOUD_CACHE/target}"
export LIBTORCH_USE_PYTORCH=1
export PATH="$OUTLOUD_VENV/bin:$OUTLOUD_CACHE/bin:$HOME/.cargo/bin:$PATH"
OUTLOUD_TORCH_LIB=$(ls -d "$OUTLOUD_VENV"/lib/python3.*/site-packages/torch/lib 2>/dev/null | head -n 1 || true)
export LD_LIBRARY_PATH="$OUTLOUD_TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OUTLOUD_BIN_DIR="$CARGO_TARGET_DIR/release"
