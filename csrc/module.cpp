// The Python module `detzoo._C`: importing it loads this shared library, which registers the
// operators above with the PyTorch dispatcher. It also says how it was built, so that a
// mismatch with the running torch is reported clearly (detzoo/_ext.py).
#include <Python.h>

#ifndef DETZOO_TORCH_VERSION
#define DETZOO_TORCH_VERSION "unknown"
#endif

#ifdef DETZOO_WITH_CUDA
static const int kWithCuda = 1;
#else
static const int kWithCuda = 0;
#endif

static struct PyModuleDef detzoo_module = {
    PyModuleDef_HEAD_INIT, "_C", "detzoo's compiled operators (registered as torch.ops.detzoo.*).",
    -1, nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&detzoo_module);
  if (m == nullptr) return nullptr;
  PyModule_AddStringConstant(m, "built_with_torch", DETZOO_TORCH_VERSION);
  PyModule_AddIntConstant(m, "with_cuda", kWithCuda);
  return m;
}
