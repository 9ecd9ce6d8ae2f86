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


def test_a_fovea_where_anatomy_does_not_put_one_is_dropped(refuge_photo):
    """On a REFUGE photo the fovea is found about 2.5 disc diameters from the disc; the same heatmap
    peak moved next to the disc is refused rather than drawn and used for the rims."""
    from device.pipeline import FOVEA_DISC_DIAMETERS

    rgb = read_rgb(refuge_photo)
    pipeline = ScreeningPipeline.from_artifacts(precision="fp32", threads=1)
    (cx, cy, diameter), fovea = pipeline.locate_disc(rgb)
    assert fovea is not None
    assert FOVEA_DISC_DIAMETERS[0] <= np.hypot(fovea[0] - cx, fovea[1] - cy) / diameter <= FOVEA_DISC_DIAMETERS[1]

    engine = pipeline.engine
    box = preprocess.whole_image_box(rgb.shape)

    class PeakBesideTheDisc:
        """The shipped engine, with its fovea heatmap's peak moved to half a disc diameter from the disc."""

        def __getattr__(self, name):
            return getattr(engine, name)

        def run(self, feeds):
            out = dict(engine.run(feeds))
            heat = out["fovea"].copy()
            peak = np.unravel_index(np.argmax(heat[0, 0]), heat.shape[2:])
            dx = int(round((fovea[0] - cx) / box.side * preprocess.INPUT_SIZE * 0.8))
            heat[0, 0] = np.roll(heat[0, 0], -dx, axis=1)  # 0.2 x the true distance from the disc
            assert heat[0, 0].max() >= 0.3 and np.argmax(heat[0, 0]) != np.ravel_multi_index(peak, heat.shape[2:])
            out["fovea"] = heat
            return out

    moved = ScreeningPipeline(PeakBesideTheDisc(), pipeline.policy)
    found, moved_fovea = moved.locate_disc(rgb)
    assert found is not None and moved_fovea is None
