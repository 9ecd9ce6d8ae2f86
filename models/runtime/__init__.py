"""What the unit runs: inference engines (ONNX Runtime on any CPU, TensorRT on a Jetson), the model
registry (the shipped files, their hashes and policies), preprocessing, the image codec, and writes that
survive a power cut (`durable`: here, the lowest floor, so that calibration, the model store and the visit
log share one).

Nothing here imports torch or the training side (`models.train`, `models.datasets`,
`models.synthetic`): a unit has none of them.
"""
