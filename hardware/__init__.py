"""The optic module's hardware: cameras, illumination and buttons over GPIO, the module's serial
controller, board pin maps, and simulators that behave like each of them.

Never imports `device/`.
"""
