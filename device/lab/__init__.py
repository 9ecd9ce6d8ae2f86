"""The lab: measuring the unit, never part of it.

Evaluation on annotated photos, the referral and progression fits, ROC, the FP32-vs-INT8 accuracy
gate, benchmarks and seeded trials (capture, power cuts of the visit log, sync, the kiosk in Chromium). Reached through the
`glaucoscreen` command's subcommands (or `python -m device.lab.NAME`); the appliance never imports it.
"""
