"""Pass 2 of the screening on a real photo with the shipped engines."""
import numpy as np
import pytest

from device.screening.pipeline import ScreeningPipeline
from models.runtime import preprocess
from models.runtime.images import read_rgb


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


@pytest.mark.parametrize("moved_to", [0.2, 1.6])
def test_a_fovea_where_anatomy_does_not_put_one_is_dropped(refuge_photo, moved_to):
    """On a REFUGE photo the fovea is found about 2.5 disc diameters from the disc; the same heatmap
    peak moved next to the disc, or well beyond where a fovea lies, is refused rather than drawn and
    used for the rims."""
    from device.screening.pipeline import FOVEA_DISC_DIAMETERS

    rgb = read_rgb(refuge_photo)
    pipeline = ScreeningPipeline.from_artifacts(precision="fp32", threads=1)
    (cx, cy, diameter), fovea = pipeline.locate_disc(rgb)
    assert fovea is not None
    apart = np.hypot(fovea[0] - cx, fovea[1] - cy) / diameter
    assert FOVEA_DISC_DIAMETERS[0] <= apart <= FOVEA_DISC_DIAMETERS[1]
    assert not FOVEA_DISC_DIAMETERS[0] <= apart * moved_to <= FOVEA_DISC_DIAMETERS[1]

    engine = pipeline.engine
    box = preprocess.whole_image_box(rgb.shape)
    scale = preprocess.INPUT_SIZE / box.side
    shift = (int(round((fovea[0] - cx) * scale * (moved_to - 1))), int(round((fovea[1] - cy) * scale * (moved_to - 1))))

    class PeakMoved:
        """The shipped engine, with its fovea heatmap's peak moved along the disc-fovea line."""

        def __getattr__(self, name):
            return getattr(engine, name)

        def run(self, feeds):
            out = dict(engine.run(feeds))
            heat = np.zeros_like(out["fovea"])
            heat[0, 0] = np.roll(out["fovea"][0, 0], shift[::-1], axis=(0, 1))
            out["fovea"] = heat
            return out

    moved = ScreeningPipeline(PeakMoved(), pipeline.policy)
    heat = moved.engine.run({"image": preprocess.to_input(rgb, box)})["fovea"][0, 0]
    assert heat.max() >= 0.3  # still a confident peak: only its place makes it implausible
    found, moved_fovea = moved.locate_disc(rgb)
    assert found is not None and moved_fovea is None


def test_a_photo_on_its_side_is_refused_not_graded_across_the_disc(shared_data):
    """Turned a quarter either way, the macula sits above or below the disc: the worker is told so."""
    from models.datasets import read_dataset

    pipeline = ScreeningPipeline.from_artifacts(precision="fp32", threads=1)
    for rec in read_dataset(shared_data / "refuge-val")[:3]:
        rgb = read_rgb(rec.image_path)
        upright = pipeline.screen(rgb)
        assert upright.gradable and upright.measurements is not None, rec.id
        for turns in (1, 3):
            turned = pipeline.screen(np.ascontiguousarray(np.rot90(rgb, turns)))
            assert not turned.gradable and turned.measurements is None, (rec.id, turns)
            assert any("turned on its side" in r for r in turned.reasons), turned.reasons


def test_a_photo_upside_down_or_of_the_other_eye_is_not_recorded_against_this_eye():
    """The unit knows which eye it photographs: a macula on the wrong side of the disc is refused."""
    from models import synthetic

    pipeline = ScreeningPipeline.from_artifacts(precision="fp32", threads=1)
    for seed, eye, other in ((0, "right", "left"), (1, "left", "right")):
        photo = synthetic.render(synthetic.random_eye(seed, laterality=eye), (1024, 1024), seed=seed).image
        assert pipeline.screen(photo, eye=eye).measurements is not None, eye  # the right eye: screened
        for shown, named in ((photo, other), (np.ascontiguousarray(np.rot90(photo, 2)), eye)):
            refused = pipeline.screen(shown, eye=named)
            assert not refused.gradable and refused.measurements is None, (eye, named)
            assert any("wrong side of the optic disc" in r for r in refused.reasons), refused.reasons
