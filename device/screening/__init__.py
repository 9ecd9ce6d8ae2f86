"""Screening: one photo in, one decision out.

Quality gate -> segmentation (disc on the whole photo, disc and cup on a disc-centred crop) ->
measurements (vCDR, rims, fovea) -> glaucoma risk (fusion of the network's logit, the disc-crop
classifier and the vCDR regression) -> progression against the eye's earlier visits -> referral
(refer / take the photo again / no glaucoma signs seen, with its reasons). Nothing here stores
anything; `device.visits` keeps what comes out.
"""
