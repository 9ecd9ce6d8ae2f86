"""The appliance: configuration, capture loop, quality gate, screening pipeline, visit log, sync,
the kiosk web app and the `glaucoscreen` command."""
