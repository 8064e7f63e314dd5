# Source this (`. benches/nccl_lib.sh`) before running ela's NCCL path on a GPU machine.
#
# cudarc 0.19 opens NCCL under the names it tries for every CUDA library (libnccl.so,
# libnccl.so.13, .12, .11, .10, .9, .1; see cuda/README.md), but NCCL 2's own name is
# libnccl.so.2: the unversioned libnccl.so exists only with the development package, and
# PyTorch's pip wheel (nvidia-nccl-cu12/13) ships libnccl.so.2 alone. When libnccl.so cannot be
# found, this finds libnccl.so.2 (ldconfig, LD_LIBRARY_PATH, the nvidia-nccl wheel), links it as
# libnccl.so in a private folder and puts that folder on LD_LIBRARY_PATH. It changes nothing else.

ela_nccl_find() {
  local d
  for d in ${LD_LIBRARY_PATH//:/ }; do
    [ -e "$d/$1" ] && { echo "$d/$1"; return 0; }
  done
  ldconfig -p 2>/dev/null | awk -v n="$1" '$1 == n { print $NF; exit }' | grep . && return 0
  ${PYTHON:-python3} - "$1" 2>/dev/null <<'PY' && return 0
import importlib.util, os, sys
spec = importlib.util.find_spec("nvidia.nccl")
for base in (spec.submodule_search_locations if spec else []):
    p = os.path.join(base, "lib", sys.argv[1])
    if os.path.exists(p):
        print(p)
        sys.exit(0)
sys.exit(1)
PY
  return 1
}

if ela_nccl_find libnccl.so >/dev/null; then
  echo "nccl_lib.sh: libnccl.so found: $(ela_nccl_find libnccl.so)"
elif so2=$(ela_nccl_find libnccl.so.2); then
  ela_nccl_dir="${TMPDIR:-/tmp}/ela-nccl-$(id -u)"
  mkdir -p "$ela_nccl_dir" && ln -sf "$so2" "$ela_nccl_dir/libnccl.so"
  export LD_LIBRARY_PATH="$ela_nccl_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "nccl_lib.sh: linked $so2 as $ela_nccl_dir/libnccl.so (now first on LD_LIBRARY_PATH)"
else
  echo "nccl_lib.sh: no libnccl.so or libnccl.so.2 found: install NCCL (pip install nvidia-nccl-cu12, or the libnccl2 package)" >&2
fi
