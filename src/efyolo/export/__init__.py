"""Export: ONNX, OpenVINO, TorchScript, CoreML, and runtime backends."""
