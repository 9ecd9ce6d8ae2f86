"""Capture: the optic module's frames become one gradable photo of one eye.

The capture loop reads each preview frame, asks the quality gate (`device.screening.quality`) what
is wrong with it, steers the white LED ring and the exposure toward a target brightness within the
light-safety limit, follows the module's focus motor, and takes a burst of stills when the frames
have been gradable long enough. It hands the still, with the gate's report of it, to whoever holds
the capture token of the `begin` that armed it, and to nobody else.
"""
