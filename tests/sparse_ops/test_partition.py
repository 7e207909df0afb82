"""Pallas kernels on a mesh run per shard (sparse_ops.partition), and the trainer sets its mesh.

The cases live in multidevice_partition.py and run in a child pytest with 4 host devices: the
device count is fixed when jax starts, and this process has one.
"""

import os
import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent


def test_multidevice_partition_cases():
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
         "PYTHONPATH": os.pathsep.join([str(HERE.parent / "train"),
                                        os.environ.get("PYTHONPATH", "")])}
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         str(HERE / "multidevice_partition.py")],
                        env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
  assert " passed" in proc.stdout and "skipped" not in proc.stdout, proc.stdout[-2000:]
