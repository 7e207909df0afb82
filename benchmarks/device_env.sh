# Source on a lent GPU machine whose image has jax/flax/optax/orbax but no package index:
#   . benchmarks/device_env.sh        (from the repository root, with .whl/ carried)
# .whl/ is made here, on a machine with an index (ignored by git, carried by the device tool):
#   python3.12 -m pip download -d .whl --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
#     grain array_record cloudpickle portpicker tyro docstring-parser typeguard shtab
# Sourced: it returns on failure and leaves the caller's shell options as they were.
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# On demand, not a 75% pool: an evaluation's ~150 programs keep modules and CUDA graphs outside
# XLA's pool, and on an 80 GB H100 the default left them too little (studies/h200/README.md).
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}"
python3 -c 'import jax, flax, grain, tyro; print("device:", jax.devices()[0].device_kind, "jax", jax.__version__, "flax", flax.__version__)' || return 1
