"""What the unit runs: inference engines (ONNX Runtime on any CPU, TensorRT on a Jetson), the model
registry (the shipped files, their hashes and policies), preprocessing and the image codec.

Nothing here imports torch or the training side (`models.train`, `models.datasets`,
`models.synthetic`): a unit has none of them.
"""
