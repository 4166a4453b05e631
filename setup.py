"""Builds the C++ XLA FFI kernels of `xla_ext` (the 1xN block-sparse matmul) during `pip install`.

Project metadata lives in pyproject.toml; this file only adds the extension. The FFI headers ship
with jaxlib (`jax.ffi.include_dir()`), so jax must be importable while building:

    pip install --no-build-isolation -e .

Nothing is downloaded at build time. Without jax (e.g. an isolated build) or without a C++
compiler the extension is skipped with a warning, and `import xla_ext` compiles the same sources
on first use into a cache directory instead (see xla_ext/__init__.py).
"""
import importlib.util
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_build_helpers():
  # By file path: importing the package would import jax and try to load the library.
  path = os.path.join(HERE, 'xla_ext', '_build.py')
  spec = importlib.util.spec_from_file_location('_xla_ext_build', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


_build = _load_build_helpers()


class BuildFfiExt(build_ext):
  """build_ext that finds the jaxlib FFI headers and compiles with the kernels' own flags.

  The result is a plain shared library (loaded with ctypes and registered through
  `jax.ffi.register_ffi_target`), named like an extension module so setuptools places it.
  """

  def build_extension(self, ext):
    try:
      import jax.ffi  # pylint: disable=g-import-not-at-top
      include_dir = jax.ffi.include_dir()
    except ImportError as e:
      self.warn(f'skipping {ext.name}: jax is not importable at build time ({e}); use '
                f'`pip install --no-build-isolation -e .`, or let `import xla_ext` compile it')
      return
    ext.include_dirs = [include_dir, os.path.join(HERE, 'xla_ext')]
    if ext.name == _build.CONV_EXTENSION_NAME:   # the training convolutions link oneDNN
      dirs = _build.onednn_dirs()
      if dirs is None:
        self.warn(f'skipping {ext.name}: oneDNN not found (`pip install onednn-cpu-gomp '
                  f'onednn-devel-cpu-gomp`); the zoo\'s convs then use XLA\'s convolution')
        return
      ext.include_dirs.append(dirs[0])
      ext.extra_link_args = _build.conv_link_args(dirs[1])
    try:
      super().build_extension(ext)
    except Exception as e:  # pylint: disable=broad-except
      self.warn(f'skipping {ext.name}: compilation failed ({e}); `import xla_ext` will compile '
                f'it on first use')

  def get_export_symbols(self, ext):
    return []  # not a Python module: no PyInit_ symbol to export


setup(
    ext_modules=[
        Extension(
            _build.EXTENSION_NAME,
            sources=[os.path.join('xla_ext', f) for f in _build.SOURCES],
            depends=[os.path.join('xla_ext', f) for f in _build.HEADERS],
            language='c++',
            extra_compile_args=list(_build.CXXFLAGS),
            optional=True,
        ),
        Extension(
            _build.CONV_EXTENSION_NAME,
            sources=[os.path.join('xla_ext', f) for f in _build.CONV_SOURCES],
            depends=[os.path.join('xla_ext', f) for f in _build.CONV_HEADERS],
            language='c++',
            extra_compile_args=list(_build.CXXFLAGS),
            optional=True,
        ),
    ],
    cmdclass={'build_ext': BuildFfiExt},
)
