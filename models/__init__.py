"""Networks, training, datasets, the synthetic fundus generator and the inference runtime.

Nothing here imports `device/`: the appliance depends on the models, never the other way round.
Torch is only needed for training (`models.net`, `models.train`); the unit runs ONNX files
through `models.runtime.engine`.
"""
