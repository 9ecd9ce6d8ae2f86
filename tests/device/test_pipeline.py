"""Pass 2 of the screening on a real photo with the shipped engines."""
import numpy as np
import pytest

from device.pipeline import ScreeningPipeline
from models import preprocess
from models.images import read_rgb


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_pass_2_averages_the_disc_and_cup_with_the_mirrored_crop(refuge_photo, precision):
    rgb = read_rgb(refuge_photo)
    pipeline = ScreeningPipeline.from_artifacts(precision=precision, threads=1)
    assert pipeline.mirror
    found, _ = pipeline.locate_disc(rgb)
    assert found is not None
    seg = pipeline.segment_disc(rgb, *found)

    x = preprocess.to_input(rgb, preprocess.disc_crop_box(*found, rgb.shape))
    plain = pipeline.engine.run({"image": x})
    mirrored = pipeline.engine.run({"image": np.ascontiguousarray(x[..., ::-1])})
    for name, got in (("disc", seg.disc_prob), ("cup", seg.cup_prob)):
        expected = (plain[name][0, 0] + mirrored[name][0, 0, :, ::-1]) / 2
        assert np.abs(got - expected).max() < 1e-4, name
        assert np.abs(got - plain[name][0, 0]).max() > 1e-3, name  # the mirrored pass did change the map
    # the glaucoma opinion stays the one the referral fusion was fitted on: the crop as taken
    assert seg.glaucoma_logit == pytest.approx(float(plain["glaucoma"].reshape(-1)[0]), abs=1e-4)

    unmirrored = ScreeningPipeline(pipeline.engine, pipeline.policy, mirror=False).segment_disc(rgb, *found)
    assert np.abs(unmirrored.disc_prob - plain["disc"][0, 0]).max() < 1e-4
