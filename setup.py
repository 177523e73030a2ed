"""Build script of detzoo: the Python package plus the `detzoo._C` extension from `csrc/`.

CPU kernels are always compiled. CUDA kernels (`csrc/**/*.cu`) are compiled too when a CUDA
device is visible or `FORCE_CUDA=1` is set (then `TORCH_CUDA_ARCH_LIST` picks the GPU
architectures; we default to the common data-centre and consumer ones).

torch is needed to build: `pyproject.toml` declares it as a build requirement, so an isolated
`pip install .` gets it, and `pip install --no-build-isolation .` uses the installed one. Without
it, or without a C++ compiler, the build stops with one clear message.

DETZOO_SKIP_EXTENSIONS=1 leaves the extensions out: `make install` sets it for
`pip install -e` and then compiles them once with `setup.py build_ext --inplace` (incremental
with ninja), instead of compiling them twice (once in pip's throwaway build folder).
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = "0.1.0"


def _fail(message):
    sys.stderr.write("\n" + "=" * 78 + "\ndetzoo: cannot build the C++ extension detzoo._C\n" + message
                     + "\n" + "=" * 78 + "\n")
    raise SystemExit(1)


def _find_cxx():
    candidates = [os.environ.get("CXX"), "c++", "g++", "clang++"]
    for c in candidates:
        if c and shutil.which(c.split()[0]):
            return shutil.which(c.split()[0])
    return None


def _want_cuda(torch):
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.cuda.is_available()


def _has_ninja():
    try:
        import ninja  # noqa: F401
        return True
    except ImportError:
        return shutil.which("ninja") is not None


def _make_extension(torch, cpp_extension, with_cuda):
    csrc = os.path.join(HERE, "csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cpp"), recursive=True))
    sources = [s for s in sources if not s.startswith(os.path.join(csrc, "cocoeval", ""))]  # own module
    cuda_sources = sorted(glob.glob(os.path.join(csrc, "**", "*.cu"), recursive=True))
    define_macros = [("DETZOO_TORCH_VERSION", '"{}"'.format(torch.__version__.split("+")[0]))]
    extra_compile_args = {"cxx": ["-O3"]}  # torch adds the C++ standard it needs
    if sys.platform != "darwin":
        extra_compile_args["cxx"].append("-fopenmp")
    extra_link_args = [] if sys.platform == "darwin" else ["-fopenmp"]
    ext_cls = cpp_extension.CppExtension
    if with_cuda:
        ext_cls = cpp_extension.CUDAExtension
        sources += cuda_sources
        define_macros.append(("DETZOO_WITH_CUDA", None))
        extra_compile_args["nvcc"] = ["-O3", "--expt-relaxed-constexpr",
                                      "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
                                      "-D__CUDA_NO_HALF2_OPERATORS__"]
    rel = [os.path.relpath(s, HERE) for s in sources]
    return ext_cls("detzoo._C", rel, include_dirs=[csrc], define_macros=define_macros,
                   extra_compile_args=extra_compile_args, extra_link_args=extra_link_args)


def _cocoeval_extension():
    """detzoo._cocoeval, the C++ COCO evaluation: a plain CPython module (neither torch nor numpy
    headers) with its own flags; -ffp-contract=off keeps IoUs bit-equal to pycocotools'."""
    from setuptools import Extension
    args = ["-O3", "-std=c++17", "-ffp-contract=off", "-pthread"]
    return Extension("detzoo._cocoeval", ["csrc/cocoeval/cocoeval.cpp"],
                     include_dirs=[os.path.join(HERE, "csrc")], extra_compile_args=args,
                     extra_link_args=["-pthread"], language="c++")


def _toolkit_with_runtime():
    """A CUDA toolkit folder holding both bin/nvcc and the runtime library, or None.

    torch guesses CUDA_HOME from the nvcc on PATH; when that nvcc is a wrapper in
    /usr/local/bin the guess (/usr/local) has no lib64/libcudart and linking fails.
    """
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for home in candidates:
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")) and \
                glob.glob(os.path.join(home, "lib*", "libcudart*")):
            return home
    return None


def get_extensions():
    """The extensions (detzoo._C, detzoo._cocoeval) and the build_ext command that compiles them."""
    if os.environ.get("FORCE_CUDA", "0") == "1" and not os.environ.get("CUDA_HOME"):
        home = _toolkit_with_runtime()
        if home:
            os.environ["CUDA_HOME"] = home
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        _fail("PyTorch is not installed in the build environment. Install it first "
              "(`pip install torch torchvision`), then `pip install --no-build-isolation -e .`.")
    if _find_cxx() is None:
        _fail("No C++ compiler was found (looked for $CXX, c++, g++, clang++).\n"
              "Install one, e.g. `apt-get install g++` on Debian/Ubuntu or the Xcode command line "
              "tools on macOS, then run the install again.")
    with_cuda = _want_cuda(torch)
    if with_cuda and cpp_extension.CUDA_HOME is None:
        _fail("CUDA kernels were requested (FORCE_CUDA=1 or a visible GPU) but no CUDA toolkit was "
              "found: set CUDA_HOME to the toolkit that contains bin/nvcc, or unset FORCE_CUDA.")
    if with_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "7.5;8.0;8.6;8.9;9.0+PTX"
    build_cmd = cpp_extension.BuildExtension.with_options(use_ninja=_has_ninja())
    extensions = [_make_extension(torch, cpp_extension, with_cuda), _cocoeval_extension()]
    return extensions, {"build_ext": build_cmd}


def _read(path):
    with open(os.path.join(HERE, path), encoding="utf-8") as f:
        return f.read()


if os.environ.get("DETZOO_SKIP_EXTENSIONS", "0") == "1":
    ext_modules, cmdclass = [], {}
else:
    ext_modules, cmdclass = get_extensions()

setup(
    name="detzoo",
    version=VERSION,
    description="Object detection and segmentation: Detectron2's models, configs and checkpoints, "
                "faster and easier to install.",
    long_description=_read("README.md"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(exclude=("tests", "tests.*", "tools", "configs")),
    package_data={"detzoo.model_zoo": ["configs/**/*.yaml"]},
    include_package_data=True,
    install_requires=[
        "numpy",
        "pycocotools>=2.0.7",
        "fvcore>=0.1.5.post20221221",
        "iopath>=0.1.9",
        "pyyaml>=5.1",
        "opencv-python-headless>=4.5",
        "termcolor>=1.1",
        "tabulate",
        "Pillow",
        "tqdm",
        "matplotlib",
    ],
    extras_require={
        "dev": ["pytest", "ninja", "lvis", "cityscapesscripts", "tensorboard", "onnx", "onnxruntime"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
