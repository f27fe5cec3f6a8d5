"""Builtin plugin: ONNX export and onnxruntime inference (imported only when used)."""
