"""The assembled unit: camera, lights, optic module, capture loop, screening pipeline and visit log,
built either from the board's real hardware or from simulators; the kiosk (`device.kiosk.serve`) serves it.

This is the only place that knows which of the two it is; everything downstream sees the same
objects.
"""
from __future__ import annotations

import datetime as dt
import logging
import shutil
import threading
import zlib
from dataclasses import dataclass, field, replace
from typing import Callable

from calibration.optical import OpticalCalibration
from device.capture import calibration as optics
from device.capture.loop import CapturedPhoto, CaptureLoop
from device.capture.metered import MeteredCamera
from device.config import Config
from device.screening.pipeline import ScreeningPipeline
from device.screening.progression import ProgressionAssessor
from device.screening.quality import QualityGate
from device.visits.datadir import DataDir
from device.visits.recording import eye_history, record_eye
from device.visits.visitlog import VisitLog
from hardware.light_dose import EyeDose
from hardware.rig import Rig, open_rig
from models.runtime.engine import EngineError
from models.runtime.installed import ModelStore

log = logging.getLogger(__name__)

class StaleCapture(Exception):
    """A page asked for a photo under a capture token that no longer owns the camera."""


@dataclass
class LoadedModels:
    """The networks of one model version, loaded together from one folder."""

    pipeline: ScreeningPipeline | None
    progression: ProgressionAssessor | None
    error: str | None = None  # why the screening pipeline is not loaded: nothing can be screened
    errors: dict[str, str] = field(default_factory=dict)  # a network left out, and why: the rest screens without it
    source: tuple | None = None  # ModelStore.active() as they were loaded: folder, version, switch


def load_models(config: Config) -> LoadedModels:
    """The active models (the installed version the data folder's pointer names, else the shipped ones), each
    network on its own: one that does not load (a TensorRT build that failed on this GPU) leaves the others
    working, and `errors` says which and why. Every network and policy comes from the same folder."""
    files = DataDir(config.data_dir)
    store = ModelStore(files.models)
    try:
        source = store.active()
        folder, release, _ = source
    except EngineError as exc:
        log.error("screening models not loaded: %s", exc)
        return LoadedModels(None, None, str(exc))
    engines = files.engines
    pipeline: ScreeningPipeline | None = None
    progression: ProgressionAssessor | None = None
    model_error: str | None = None
    model_errors: dict[str, str] = {}
    try:
        try:
            pipeline = ScreeningPipeline.from_artifacts(precision=config.precision, gate=QualityGate(config.quality),
                                                        engine_cache=engines, artifacts=folder)
        except EngineError as exc:
            # Start anyway: the kiosk tells the worker what is wrong, and visits can still be looked up.
            log.error("screening models not loaded: %s", exc)
            model_error = str(exc)
        else:
            model_errors.update(pipeline.not_loaded)
            pipeline.model_versions["models_release"] = release  # which release, as `glaucoscreen models list` names it
        try:
            progression = ProgressionAssessor.from_artifacts(engine_cache=engines, without_engine_if_refused=True,
                                                             artifacts=folder)
        except EngineError as exc:
            log.error("progression not loaded; screening without comparing with earlier visits: %s", exc)
            model_errors["progression"] = f"{str(exc).rstrip('.')}. Screening runs without comparing with earlier visits."
        else:
            if progression.engine_error is not None:
                log.error("progression network not loaded; change is judged on the cup-to-disc ratio alone: %s",
                          progression.engine_error)
                model_errors["progression"] = (f"{progression.engine_error.rstrip('.')}. Change since earlier visits "
                                               "is judged on the cup-to-disc ratio alone.")
    except BaseException:
        for part in (pipeline, progression):
            if part is not None:
                part.close()
        raise
    return LoadedModels(pipeline, progression, model_error, model_errors, source)


def _active_models(config: Config, errors: dict[str, str] | None = None) -> tuple | None:
    """ModelStore.active() for this unit: which models it should be running (None: the pointer cannot be read;
    why goes into `errors`, where given)."""
    try:
        return ModelStore(DataDir(config.data_dir).models).active()
    except EngineError as exc:
        if errors is not None:
            errors["update"] = f"{exc}. The unit goes on screening with the models it had loaded."
        return None


class Unit:
    model_error: str | None = None  # why the screening pipeline is not loaded: nothing can be screened
    models_from: tuple | None = None  # ModelStore.active() for the loaded models: folder, version, switch
    _refused_models: tuple | None = None  # newly active models that did not load: not tried again at every screening

    def __init__(self, config: Config, *, rig: Rig, pipeline: ScreeningPipeline | None, visits: VisitLog,
                 progression: ProgressionAssessor | None = None):
        self.config = config
        self.rig = rig
        self.camera = rig.camera
        self.illumination = rig.illumination
        self.optic_module = rig.optic_module
        self.simulated = rig.simulated
        self.pipeline = pipeline
        self.progression = progression
        self.model_errors: dict[str, str] = {}  # a network left out, and why: the rest screens without it
        self.visits = visits
        self.models_from = _active_models(config)  # a pipeline given here is taken to be the active models'
        self._screen_lock = threading.Lock()  # one screening at a time: the engines are not re-entrant on small boards
        self._binding_lock = threading.Lock()
        self._binding: tuple[str, str, str] | None = None  # (capture token, visit, eye) the camera is armed for
        self.frames = MeteredCamera(rig.camera)
        # the optic module's calibration: its LED response to the lights now, its correction to every frame
        self.calibration = optics.put_to_work(config, rig)
        self.capture = CaptureLoop(self.frames, QualityGate(config.quality), config.capture, illumination=rig.illumination,
                                   optic_module=rig.optic_module, correction=self.calibration.correction)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Config) -> "Unit":
        """The unit on the board's hardware, or in simulation when `config.simulate` is set, with the active
        models (`load_models`)."""
        rig = open_rig(**config.rig_options())
        opened: VisitLog | None = None
        try:
            visits = opened = VisitLog(config.data_dir)
            models = load_models(config)
        except BaseException:
            if opened is not None:
                opened.close()
            rig.close()
            raise
        unit = cls(config, rig=rig, pipeline=models.pipeline, visits=visits, progression=models.progression)
        unit._take(models)
        return unit

    # -- models ---------------------------------------------------------------------------------
    def _take(self, models: "LoadedModels") -> None:
        self.pipeline, self.progression = models.pipeline, models.progression
        self.model_error, self.model_errors = models.error, models.errors
        self.models_from = models.source

    def _pick_up_new_models(self) -> None:
        """Called under the screening lock: when another version became active since the models were loaded (an
        install or rollback from the kiosk, the command or the sync service, which are other processes), load
        it before the next screening, so every result names the models that made it. New models that do not
        load leave the old ones screening, and the Models page says why."""
        source = _active_models(self.config, self.model_errors if self.pipeline is not None else None)
        if source is None and self.pipeline is not None:
            return
        if source == self.models_from or (source is not None and source == self._refused_models):
            return
        models = load_models(self.config)
        if models.pipeline is None and self.pipeline is not None:
            self._refused_models = source
            self.model_errors["update"] = (f"the newly active models could not be loaded ({models.error}); the unit goes on "
                                           "screening with the ones it had")
            return
        old = (self.pipeline, self.progression)
        self._take(models)
        self._refused_models = None
        for part in old:
            if part is not None:
                part.close()
        log.info("models of %s loaded: %s", source, self.pipeline.model_versions if self.pipeline else self.model_error)

    def reload_models(self) -> None:
        """Load the active models now if they changed (after an install on the kiosk's Models page), rather than
        at the next screening."""
        with self._screen_lock:
            self._pick_up_new_models()

    # -- what the kiosk uses --------------------------------------------------------------------
    def begin_capture(self, visit_uuid: str, eye: str) -> str:
        """Arm the capture loop for one eye of one visit; in simulation, put that patient's eye in front of
        the camera. Returns the capture token: only it can take the photo, and only for this visit and eye."""
        if self.simulated and hasattr(self.camera, "present_eye"):
            ident = self.visits.get_visit(visit_uuid)["patient"]["identifier"]
            self.camera.present_eye(seed=zlib.crc32(f"{ident}:{eye}".encode()), laterality=eye)
        earlier = self.visits.light_dose(visit_uuid, eye)  # this eye's light earlier in the visit (a retake, a restart)
        with self._binding_lock:
            self._book_light()  # the eye lit until now has had all its light
            token = self.capture.begin(eye, dose_key=f"{visit_uuid}/{eye}",
                                       prior_dose=EyeDose.from_dict(earlier) if earlier else None)
            self._binding = (token, visit_uuid, eye)
        return token

    def _book_light(self) -> None:
        """Record in the visit log the light the bound eye has had so far (under the binding lock)."""
        if self._binding is None:
            return
        _, visit_uuid, eye = self._binding
        dose = self.capture.light_dose()
        if dose is None:
            return
        try:
            self.visits.record_light_dose(visit_uuid, eye, dose)
        except (LookupError, ValueError) as exc:
            log.error("the light dose of visit %s, %s eye, was not recorded: %s", visit_uuid, eye, exc)

    def capture_bound_to(self, token: str) -> tuple[str, str] | None:
        """The (visit, eye) the camera is armed for, if `token` is the page that armed it; else None: the
        camera has been taken over by another page (another patient, or this one again) since."""
        with self._binding_lock:
            if self._binding is None or self._binding[0] != token or self.capture.owner() != token:
                return None
            return self._binding[1], self._binding[2]

    def take_capture(self, visit_uuid: str, eye: str, token: str) -> CapturedPhoto | None:
        """The photo taken for this visit and eye under `token`, or None while there is none yet.
        Raises StaleCapture when the camera is no longer this page's: nothing may be recorded then."""
        if self.capture_bound_to(token) != (visit_uuid, eye):
            raise StaleCapture("The camera is in use for another patient or eye; nothing was recorded for this one.")
        return self.capture.take_photo(token)

    def cancel_capture(self, visit_uuid: str) -> None:
        """Disarm the camera if it is armed for this visit; a visit being left never disarms another's."""
        with self._binding_lock:
            if self._binding is not None and self._binding[1] == visit_uuid:
                self._book_light()
                self.capture.cancel(self._binding[0])
                self._binding = None

    def screen_and_record(self, visit_uuid: str, eye: str, photo: CapturedPhoto) -> dict:
        with self._screen_lock:
            self._pick_up_new_models()
            if self.pipeline is None:
                raise EngineError(self.model_error or "the screening models are not loaded")
            history = None
            if self.progression is not None:
                history = eye_history(self.visits, self.visits.get_visit(visit_uuid)["patient"]["identifier"], eye)
            # the capture loop's report on this still: the gate has judged it once, with the same settings
            result = self.pipeline.screen(photo.rgb, quality=photo.quality, history=history, progression=self.progression,
                                          eye=eye)
            ids = record_eye(self.visits, visit_uuid, eye, photo.rgb, result, source="simulator" if self.simulated else "camera",
                             raw=photo.raw, calibration=photo.calibration)
            if photo.trace.get("light_dose"):
                self.visits.record_light_dose(visit_uuid, eye, photo.trace["light_dose"])
        return result.to_dict() | ids | {"capture_trace": photo.trace}

    def calibrate(self, *, light_meter_mw_cm2: float | None = None) -> OpticalCalibration:
        """Calibrate the optic module now, from the admin's page: the capture loop pauses (the calibration needs
        the camera and the lights to itself), and starts again with the new correction whatever happened.
        In simulation the grey target is put in front of the module, and the model eye's light meter read.
        Refused (CalibrationRefused, in words) while a screening has the camera armed: a patient is in front."""
        from calibration.measure import CalibrationRefused

        with self._binding_lock:
            if self._binding is not None and self.capture.owner() == self._binding[0]:
                raise CalibrationRefused("a screening is using the camera: finish or cancel it, then calibrate")
            self.capture.stop()
            try:
                meter: Callable[[float], float] | None = None
                if light_meter_mw_cm2 is not None:
                    reading = float(light_meter_mw_cm2)
                    meter = lambda _level: reading  # noqa: E731 - the reading a person took with the ring at the light limit
                if self.simulated and hasattr(self.camera, "present_target"):
                    self.camera.present_target()
                    meter = meter or self.rig.light_meter  # the simulator's model eye reads itself
                made = optics.run(self.config, self.rig, light_meter=meter)
                self.calibration = optics.put_to_work(self.config, self.rig)
                self.capture.set_correction(self.calibration.correction)
                return made
            finally:
                if self.simulated and hasattr(self.camera, "remove_target"):
                    self.camera.remove_target()
                self.capture.start()

    def engines(self) -> list:
        """The inference engines this unit has loaded: segmentation, disc classifier, progression."""
        found = []
        if self.pipeline is not None:
            found += [e for e in (self.pipeline.engine, self.pipeline.classifier) if e is not None]
        if self.progression is not None and self.progression.engine is not None:
            found.append(self.progression.engine)
        return found

    def status(self) -> dict:
        cap = self.capture.state()
        out = {
            "simulated": self.simulated,
            "camera": {"ok": cap["running"] and not cap["error"], "error": cap["error"],
                       **(self.camera.info() if hasattr(self.camera, "info") else {}), "frame_rate": self.frames.rate()},
            "illumination": self.illumination.state() if self.illumination is not None else {"ok": False},
            "models": ({"ok": True, **self.pipeline.model_versions} if self.pipeline is not None
                       else {"ok": False, "error": self.model_error}) | (
                           {"not_loaded": dict(self.model_errors)} if self.model_errors else {}),
            "disk_free_bytes": shutil.disk_usage(self.config.data_dir).free,
            "outbox": self.visits.outbox_counts(),
            "calibration": self.calibration.to_dict(self.config.calibration.max_age_days),
        }
        try:
            out["optic_module"] = {"ok": True, **self.optic_module.identify()} if self.optic_module else {"ok": False, "error": "none configured"}
        except Exception as exc:  # noqa: BLE001 - reported to the kiosk's device page
            out["optic_module"] = {"ok": False, "error": str(exc)}
        return out

    def optic_module_state(self, identity: dict | None = None) -> dict:
        """What the optic module says of itself: identity, focus motor, temperature, faults, line quality.
        Each reading on its own, so one the firmware does not answer still leaves the others. `identity`
        is `status()["optic_module"]` when the caller has it already: one question less on the line."""
        module = self.optic_module
        if module is None:
            return {"ok": False, "error": "none configured"}
        if identity is None:
            try:
                identity = {"ok": True, **module.identify()}
            except Exception as exc:  # noqa: BLE001 - shown on the admin's device page
                identity = {"ok": False, "error": str(exc)}
        if not identity.get("ok"):
            return {**identity, "port": getattr(module, "port", None)}
        out = dict(identity)
        for key, read in (("focus_position", module.focus_position), ("temperature_c", module.temperature),
                          ("faults", module.faults), ("line", module.stats)):
            try:
                out[key] = read()
            except Exception as exc:  # noqa: BLE001 - one unreadable value must not hide the others
                out[key] = None
                out.setdefault("errors", {})[key] = str(exc)
        return out

    def apply_settings(self, values: dict[str, dict]) -> None:
        """Put checked settings (`device.config.check_overrides`) to work now: the gate's thresholds (the
        preview's gate and the screening's share one settings object), frames in a row before auto-capture,
        the brightness the light aims for and the light limit. The limit is lowered in the lights themselves
        too, so it holds from the next frame; it is never raised above the configuration's safety cap."""
        quality, capture = values.get("quality", {}), values.get("capture", {})
        replace(self.config.quality, **quality).validate()
        level = capture.get("max_led_level")
        if level is not None and not 0.0 < level <= self.config.led_safety_cap:
            raise ValueError(f"the light limit {level} is above the safety cap {self.config.led_safety_cap}")
        for name, value in quality.items():
            setattr(self.config.quality, name, value)
        for name, value in capture.items():
            setattr(self.config.capture, name, value)
        self.capture.set_light_aim(target=capture.get("target_brightness"), max_level=level)

    def start(self) -> None:
        self.visits.recover()
        try:
            ModelStore(DataDir(self.config.data_dir).models).recover_if_idle()  # what a power cut in an install left
        except (OSError, EngineError) as exc:
            log.error("leftovers of an interrupted model install not cleared: %s", exc)
        closed = self.visits.close_abandoned(dt.timedelta(hours=self.config.abandon_visit_after_h))
        if closed:
            log.info("closed %d visit(s) left unfinished for over %g h; they are sent with what they have",
                     len(closed), self.config.abandon_visit_after_h)
        self.capture.start()

    def close(self) -> None:
        self.capture.stop()
        with self._screen_lock:  # no screening in flight when the engines' memory goes
            for part in (self.pipeline, self.progression):
                close = getattr(part, "close", None)
                if close is not None:
                    close()
        self.visits.close()
        self.rig.close()
