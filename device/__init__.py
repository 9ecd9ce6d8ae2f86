"""The appliance, in rooms that follow the data:

    capture/    the capture loop and its light and focus controllers
    screening/  quality gate, pipeline, measurements, referral, progression
    visits/     visit log, image store, migrations, durable writes, the data directory
    outbox/     DICOM mapping, DICOMweb, sync, USB export
    kiosk/      the health worker's web app
    lab/        evaluation, fits, benchmarks and trials (the appliance never imports it)

plus `cli.py` (the `glaucoscreen` command), `config.py`, `unit.py` (the assembled unit),
`accounts.py` (health workers' PINs), `doctor.py` (the unit's self-check) and `sdnotify.py` (systemd).
"""
