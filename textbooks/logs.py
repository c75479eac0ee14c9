"""The one logging set-up of every verb: this project's progress and real warnings by default, the rest with
``--verbose``.

Two sources of noise need different handles:

* native libraries print from C++ straight to file descriptor 2: TensorFlow (oneDNN notices, CUDA stubs and
  ``cuInit`` failures on machines without a GPU, tf.data's cache advice, tensorflow-text's
  ``precompiled_charsmap is empty``), and libtpu probing for a TPU that is not there. TensorFlow 2.21 logs
  through absl before ``absl::InitializeLog`` and ignores ``TF_CPP_MIN_LOG_LEVEL`` there, so the console script
  passes its stderr through :func:`filter_native_stderr`: a small child process that drops native INFO and
  WARNING lines and the known notices and copies everything else (our logs, tracebacks, native errors) as it
  comes. Being a separate process, it still copies a crash's last words. The environment switches of
  :func:`quiet_native_libraries` cover what honours them;
* Python loggers of the stack (absl, TensorFlow, Beam workers, orbax, jax) log at INFO; they are held at
  WARNING unless verbose.

JAX's platform: when ``JAX_PLATFORMS`` is unset and libtpu is installed but this machine has no TPU device
(``/dev/accel*`` or ``/dev/vfio``) and no JAX GPU plugin, JAX would spend seconds failing to start a TPU backend
and print its errors; the CPU is chosen instead. An explicit ``JAX_PLATFORMS`` always wins.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import subprocess
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Python loggers that are held at WARNING unless verbose.
NOISY_LOGGERS = ("absl", "tensorflow", "apache_beam", "orbax", "jax", "jax._src", "seqio", "datasets", "h5py",
                 "urllib3", "matplotlib", "PIL", "fsspec", "asyncio", "aiohttp.access", "tensorflow_datasets",
                 "etils", "submitit")
_NATIVE_QUIET = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # TensorFlow and tensorflow-text C++ logs: INFO, WARNING and ERROR
    "GRPC_VERBOSITY": "ERROR",
    "GLOG_minloglevel": "2",
    "TPU_STDERR_LOG_LEVEL": "3",
    "TPU_MIN_LOG_LEVEL": "3",
}


def _has_accelerator_plugin() -> bool:
    return any(importlib.util.find_spec(name) is not None
               for name in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin"))


def _has_tpu_device() -> bool:
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")) or "TPU_ACCELERATOR_TYPE" in os.environ


def quiet_native_libraries(verbose: bool = False) -> None:
    """Sets the environment switches of native libraries' logs (unless verbose) and, on a machine with neither
    TPU nor GPU, ``JAX_PLATFORMS=cpu``. Call before TensorFlow, JAX or libtpu are imported; values the user set
    are kept."""
    if not verbose:
        for key, value in _NATIVE_QUIET.items():
            os.environ.setdefault(key, value)
    if "JAX_PLATFORMS" not in os.environ and not _has_tpu_device() and not _has_accelerator_plugin():
        os.environ["JAX_PLATFORMS"] = "cpu"


# Lines dropped from stderr unless verbose: absl/glog INFO and WARNING lines of native code ("I1206 10:51:10.33
# 1234 file.cc:12]" or "I0000 00:00:1796554258.96 16344 port.cc:153]"), absl's notice about logging before
# initialization, notices that are errors in form only on a machine without a GPU or TPU, and what every Beam
# worker process prints at start-up whatever its log level (its imports and its handler set-up).
NATIVE_NOISE = (
    r"^[IW]\d{4} \d\d:\d\d:[\d.]+\s+\d+ [\w./-]+:\d+\] ",
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR",
    r"^WARNING: Logging before InitGoogle\(\) is written to STDERR",
    r"failed call to cuInit",
    r"precompiled_charsmap is empty",
    r"Could not find cuda drivers on your machine",
    r"apitools not found, and bigquery client libraries are not available",
    r"No semi_persistent_directory found",
    r"Discarding unparseable args: .*direct_runner_use_stacked_bundle",
    r"^INFO:[\w.]*:Logging handler created\.",
)
_FILTER = """
import re, sys
noise = re.compile("|".join(sys.argv[1:]).encode())
out = sys.stderr.buffer
for line in iter(sys.stdin.buffer.readline, b""):
    if not noise.search(line):
        out.write(line)
        out.flush()
"""


def filter_native_stderr() -> bool:
    """Routes this process's file descriptor 2 (and its children's) through a filter process that drops
    :data:`NATIVE_NOISE`; returns whether it did. For the console script only: it rewires the whole process."""
    try:
        child = subprocess.Popen([sys.executable, "-S", "-u", "-c", _FILTER, *NATIVE_NOISE], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, close_fds=True)
    except OSError:
        return False
    sys.stderr.flush()
    os.dup2(child.stdin.fileno(), 2)
    child.stdin.close()  # fd 2 now holds the pipe's only write end: the filter ends when this process does
    return True


def drop_gin_path_probes(record: logging.LogRecord) -> bool:
    """A logging filter: gin logs every search-path probe of an include (at ERROR when a probe misses)."""
    return not record.pathname.replace("\\", "/").endswith("gin/resource_reader.py")


def setup(level: str | int = "INFO", verbose: bool = False) -> None:
    """Configures Python logging once for a verb: our loggers at ``level``, the stack's at WARNING unless
    ``verbose`` (then everything at ``level``, DEBUG included when asked)."""
    if isinstance(level, str):
        level = getattr(logging, level.upper(), logging.INFO)
    quiet_native_libraries(verbose)
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    for handler in root.handlers:
        if drop_gin_path_probes not in handler.filters:
            handler.addFilter(drop_gin_path_probes)
    root.setLevel(level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level if verbose else max(level, logging.WARNING))
    try:  # absl's own handler would print a second copy of warnings in its format
        from absl import logging as absl_logging

        absl_logging.set_verbosity("debug" if verbose and level <= logging.DEBUG else
                                   ("info" if verbose else "warning"))
        absl_logging.use_python_logging(quiet=True)
    except ImportError:
        pass
