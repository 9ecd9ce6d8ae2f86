"""Outbox: finished visits leave the unit, exactly once, in a form the clinic's systems read.

The visit -> DICOM mapping (Ophthalmic Photography, Segmentation, structured report, UIDs derived
from the visit's UUID so a resend stores nothing twice), the DICOMweb client, the sync run that
sends due items in order with backoff and quarantine, and the export to a USB stick.
"""
