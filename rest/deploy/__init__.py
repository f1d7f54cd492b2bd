"""Model files and inference: compact sparse model files and fast sparse CPU inference.

Imports the foundation and ``rest.core`` only. Public surface, by module:

- ``model_file``: ``load_model``, ``predict_file``, reading and writing model files
  (the format: ``rest.core.model_format``);
- ``infer``: the inference engines (dense, sparse); ``kernel``: the sparse convolution kernel (numba).
"""

__all__ = ["infer", "kernel", "model_file"]
