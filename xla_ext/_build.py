"""How the C++ kernels are compiled: one place for `setup.py` and the compile-on-import fallback.

This module imports nothing from the package (setup.py loads it by file path, before jax or the
package can be imported), and nothing but the standard library.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
import sysconfig
import tempfile
from typing import Callable, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))

# The handler (bsmm_ffi.cc), the portable kernel, and the two SIMD kernels. The SIMD units are
# compiled with `#pragma GCC target`, never with -m flags, so one build runs on every x86-64 CPU
# and the instruction set is chosen at run time (__builtin_cpu_supports in bsmm_ffi.cc).
SOURCES = ('bsmm_ffi.cc', 'bsmm_generic.cc', 'bsmm_avx2.cc', 'bsmm_avx512.cc')
# The bit-packed binary conv (binconv.h): its handler and its three kernels, built the same way.
SOURCES += ('binconv_ffi.cc', 'binconv_generic.cc', 'binconv_avx2.cc', 'binconv_avx512.cc')
HEADERS = ('bsmm.h', 'bsmm_impl.h', 'bsmm_cf_impl.h', 'bsmm_avx_pack.h', 'depthwise3x3.h',
           'depthwise3x3_impl.h')
HEADERS += ('binconv.h', 'binconv_impl.h')
CXXFLAGS = ('-O3', '-std=c++17', '-fPIC', '-fvisibility=hidden', '-fno-math-errno')
# The package-relative name setuptools gives the built library (plus the interpreter's suffix).
EXTENSION_NAME = 'xla_ext._bsmm'


def source_paths() -> list:
  return [os.path.join(HERE, f) for f in SOURCES]


def newest_source_mtime() -> float:
  return max(os.path.getmtime(os.path.join(HERE, f)) for f in SOURCES + HEADERS)


def source_digest(include_dir: str, extra: str = '') -> str:
  """Hash of everything the binary depends on: sources, flags, FFI headers, compiler."""
  h = hashlib.sha256()
  for f in SOURCES + HEADERS:
    with open(os.path.join(HERE, f), 'rb') as fh:
      h.update(f.encode() + b'\0' + fh.read())
  h.update(' '.join(CXXFLAGS).encode())
  for hdr in ('xla/ffi/api/ffi.h', 'xla/ffi/api/api.h', 'xla/ffi/api/c_api.h'):
    path = os.path.join(include_dir, hdr)
    if os.path.exists(path):
      with open(path, 'rb') as fh:
        h.update(fh.read())
  h.update((compiler() or '').encode() + extra.encode())
  return h.hexdigest()[:16]


def compiler() -> Optional[str]:
  for name in (os.environ.get('CXX'), 'g++', 'c++', 'clang++'):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def compile_shared_library(include_dir: str, out_path: str,
                           extra_flags: Sequence[str] = ()) -> None:
  """Compiles the kernels into `out_path` atomically (concurrent importers never see half a file).

  Raises:
    RuntimeError: no C++ compiler, or the compiler failed (its output is in the message).
  """
  cxx = compiler()
  if cxx is None:
    raise RuntimeError('no C++ compiler found (tried $CXX, g++, c++, clang++); install g++ or '
                       'build the extension with `pip install --no-build-isolation -e .`')
  os.makedirs(os.path.dirname(out_path) or '.', exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(out_path) or '.')
  os.close(fd)
  cmd = [cxx, *CXXFLAGS, *extra_flags, '-shared', '-I' + include_dir, '-I' + HERE,
         *source_paths(), '-o', tmp]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError('compiling the xla_ext kernels failed:\n$ ' + ' '.join(cmd) + '\n' +
                         proc.stderr[-4000:])
    os.replace(tmp, out_path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def extension_suffix() -> str:
  return sysconfig.get_config_var('EXT_SUFFIX') or '.so'


# --- The training convolutions (conv_ffi.cc), a second library: it links oneDNN (the
# `onednn-cpu-gomp` + `onednn-devel-cpu-gomp` wheels, which put include/dnnl.hpp and lib/libdnnl.so
# under the interpreter's prefix), so the block-sparse kernels above never depend on it. ---
CONV_SOURCES = ('conv_ffi.cc', 'conv_wgrad_direct.cc')
CONV_HEADERS = ()
CONV_EXTENSION_NAME = 'xla_ext._conv'


def onednn_dirs() -> Optional[tuple]:
  """``(include_dir, lib_dir)`` of oneDNN, from ``$ONEDNN_ROOT`` or the interpreter's prefix
  (where the pip wheels install it); None when there is no ``dnnl.hpp`` + ``libdnnl.so``."""
  import sys
  for root in (os.environ.get('ONEDNN_ROOT'), sys.prefix, sys.base_prefix, '/usr', '/usr/local'):
    if not root:
      continue
    inc, lib = os.path.join(root, 'include'), os.path.join(root, 'lib')
    if os.path.exists(os.path.join(inc, 'dnnl.hpp')) and any(
        os.path.exists(os.path.join(lib, n)) for n in ('libdnnl.so', 'libdnnl.so.3')):
      return inc, lib
  return None


def conv_link_args(lib_dir: str) -> list:
  libdnnl = 'libdnnl.so' if os.path.exists(os.path.join(lib_dir, 'libdnnl.so')) else 'libdnnl.so.3'
  return ['-L' + lib_dir, '-l:' + libdnnl, '-lgomp', '-Wl,-rpath,' + lib_dir]


def conv_source_digest(include_dir: str) -> str:
  """Hash of what the conv library depends on: its sources, flags, FFI and oneDNN headers."""
  h = hashlib.sha256()
  dirs = onednn_dirs()
  for f in CONV_SOURCES + CONV_HEADERS:
    with open(os.path.join(HERE, f), 'rb') as fh:
      h.update(f.encode() + b'\0' + fh.read())
  h.update(' '.join(CXXFLAGS).encode() + repr(dirs).encode())
  paths = [os.path.join(include_dir, 'xla/ffi/api/ffi.h'), os.path.join(include_dir,
                                                                           'xla/ffi/api/api.h')]
  if dirs:
    paths.append(os.path.join(dirs[0], 'dnnl_version.h'))
  for path in paths:
    if os.path.exists(path):
      with open(path, 'rb') as fh:
        h.update(fh.read())
  h.update((compiler() or '').encode())
  return h.hexdigest()[:16]


def compile_conv_library(include_dir: str, out_path: str) -> None:
  """Compiles conv_ffi.cc against oneDNN into `out_path`, atomically.

  Raises:
    RuntimeError: no compiler, no oneDNN (with the pip command that installs it), or the
      compiler failed.
  """
  cxx = compiler()
  dirs = onednn_dirs()
  if cxx is None:
    raise RuntimeError('no C++ compiler found (tried $CXX, g++, c++, clang++)')
  if dirs is None:
    raise RuntimeError('oneDNN not found (no include/dnnl.hpp + lib/libdnnl.so under '
                       '$ONEDNN_ROOT or the Python prefix); `pip install onednn-cpu-gomp '
                       'onednn-devel-cpu-gomp` installs it')
  os.makedirs(os.path.dirname(out_path) or '.', exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=os.path.dirname(out_path) or '.')
  os.close(fd)
  cmd = [cxx, *CXXFLAGS, '-shared', '-I' + include_dir, '-I' + dirs[0], '-I' + HERE,
         *[os.path.join(HERE, f) for f in CONV_SOURCES], '-o', tmp, *conv_link_args(dirs[1])]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError('compiling the xla_ext conv kernels failed:\n$ ' + ' '.join(cmd) + '\n' +
                         proc.stderr[-4000:])
    os.replace(tmp, out_path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def cache_dir() -> str:
  """Where libraries compiled on first import go: ``$XLA_EXT_CACHE_DIR`` or
  ``~/.cache/compress-jax/xla_ext``."""
  return os.environ.get('XLA_EXT_CACHE_DIR') or os.path.join(
      os.path.expanduser('~'), '.cache', 'compress-jax', 'xla_ext')


def load_ffi_library(ext_name: str, newest_mtime: Callable[[], float],
                     cache_file: Callable[[], str], compile_to: Callable[[str], None],
                     register: Callable[[ctypes.CDLL], None]
                     ) -> Tuple[Optional[ctypes.CDLL], Optional[str], Optional[str]]:
  """Loads one of the FFI libraries and registers its targets: ``(lib, path, None)``, or
  ``(None, None, why)`` when no way worked.

  Tried in order: the ``setup.py``-built ``<ext_name><EXT_SUFFIX>`` next to this file, unless a
  source changed after it was built (``newest_mtime()``); then ``cache_dir()/cache_file()``,
  compiled there by ``compile_to(path)`` when absent. ``register(lib)`` registers the targets;
  a failure of any step moves on to the next way and keeps its reason.
  """
  def built() -> Optional[str]:
    for path in glob.glob(os.path.join(HERE, ext_name + extension_suffix())):
      if os.path.getmtime(path) >= newest_mtime():
        return path
    return None

  def cached() -> str:
    path = os.path.join(cache_dir(), cache_file())
    if not os.path.exists(path):
      compile_to(path)
    return path

  errors = []
  for way, finder in (('setup.py build', built), ('compiled on import', cached)):
    try:
      path = finder()
      if path is None:
        continue
      lib = ctypes.cdll.LoadLibrary(path)
      register(lib)
      return lib, path, None
    except (OSError, RuntimeError, AttributeError) as e:  # try the next way, keep the reason
      errors.append(f'{way}: {e}')
  return None, None, '; '.join(errors) or 'no library found'
