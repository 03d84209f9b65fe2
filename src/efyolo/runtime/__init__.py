"""Inference runtimes behind one loader (:func:`efyolo.runtime.autobackend.load_backend`): PyTorch for
``.pt`` checkpoints, ONNX Runtime, OpenVINO and TorchScript for exported files."""
