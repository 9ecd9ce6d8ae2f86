"""How much light the white ring puts into an eye, and how much it may: the LED response, the limits and the
dose ledger that `hardware.illumination.Illumination` keeps and enforces.

The ring is driven by a level (0..1, a PWM duty cycle); what reaches the eye is an irradiance at the pupil,
in mW/cm2, which follows the level through the LEDs' own, non-linear, ageing response. The response comes
from the module's calibration (`calibration/measure.py`: brightness measured at each level, scaled by a
light meter's reading in a model eye) or, until the module is calibrated, from its datasheet's figure at
full level, taken as linear.

Units: irradiance in mW/cm2 and radiant exposure in mJ/cm2, so that mW/cm2 x seconds = mJ/cm2.

The limits' defaults (`LightLimits`) are those of ISO 15004-2:2007 ("Ophthalmic instruments - Fundamental
requirements and test methods - Part 2: Light hazard protection"), clause 5.4.1, Table 2: the limits for
Group 1 continuous-wave instruments (a CW exposure is one of 0.25 s or more: the preview, and the flash too,
which lasts up to half a second). As we read Table 2 (from secondary sources, not the standard's own text):
  5.4.1.3 a)  weighted retinal photochemical (aphakic) irradiance, E_A-R <= 220 uW/cm2 = 0.22 mW/cm2;
  5.4.1.6 a)  weighted retinal visible and infrared thermal irradiance, E_VIR-R <= 0.7 W/cm2 = 700 mW/cm2;
both for exposures up to 2 hours. THESE VALUES MUST BE CHECKED AGAINST THE STANDARD'S TEXT (and its 2024
edition) before a unit is used on patients. How the unit compares with them, and why that errs on the
safe side for the photochemical limit:
  * the unit knows no spectrum, so its irradiance is compared unweighted. For a white LED, which emits no
    ultraviolet, the aphakic weighting A(lambda) is at most 1, so the unweighted figure is at least the
    weighted one. The thermal weighting R(lambda) exceeds 1 in the blue, so the thermal comparison is not
    conservative by itself; it is 3000 times above the photochemical one here and never binds, but a
    programme must check it with its module's measured spectrum;
  * the irradiance is the one at the pupil, compared as if it all reached the retina unspread: the beam
    that enters a pupil of a few square millimetres spreads over the illuminated retina (about 1 cm2 for a
    45-degree field), so the retinal irradiance is lower.
The per-visit cap on radiant exposure is the programme's own (no figure of the standard): it bounds what
one eye gets in one visit, retakes included, so a unit left lit on a patient stops by itself.
"""
from __future__ import annotations

import bisect
import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

PHOTOCHEMICAL_GROUP1_MW_CM2 = 0.22   # ISO 15004-2:2007, 5.4.1.3 a), Table 2 (Group 1, CW): 220 uW/cm2, as we read it
THERMAL_GROUP1_MW_CM2 = 700.0        # ISO 15004-2:2007, 5.4.1.6 a), Table 2 (Group 1, CW): 0.7 W/cm2, as we read it
VISIT_EXPOSURE_CAP_MJ_CM2 = 50.0     # the programme's own cap per eye per visit: ~8 minutes of preview at 0.1 mW/cm2
NOMINAL_FULL_MW_CM2 = 0.2            # the reference module's datasheet: irradiance at the pupil with the ring at full level
LIMITS_BASIS = ("ISO 15004-2:2007 clause 5.4.1, Table 2, Group 1 continuous-wave limits as read from secondary "
                "sources (5.4.1.3 a photochemical 0.22 mW/cm2; 5.4.1.6 a thermal 700 mW/cm2), compared unweighted "
                "at the pupil; the per-visit exposure cap is the programme's own. To be checked against the "
                "standard's text.")


class LightLimitReached(RuntimeError):
    """The white light was stopped (ring off) because going on would exceed a light-safety limit; the
    message says which limit and the figures, in words."""


@dataclass(frozen=True)
class LightLimits:
    """The limits the lights are held to; each figure is compared with the irradiance at the pupil."""

    photochemical_mw_cm2: float = PHOTOCHEMICAL_GROUP1_MW_CM2
    thermal_mw_cm2: float = THERMAL_GROUP1_MW_CM2
    visit_exposure_mj_cm2: float = VISIT_EXPOSURE_CAP_MJ_CM2
    basis: str = LIMITS_BASIS

    def __post_init__(self) -> None:
        for name in ("photochemical_mw_cm2", "thermal_mw_cm2", "visit_exposure_mj_cm2"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"light limit {name} must be a positive number, not {value!r}")

    @property
    def max_irradiance_mw_cm2(self) -> float:
        """The continuous irradiance no level may exceed: the lower of the two limits."""
        return min(self.photochemical_mw_cm2, self.thermal_mw_cm2)

    def to_dict(self) -> dict:
        return {"max_irradiance_mw_cm2": self.max_irradiance_mw_cm2,
                "photochemical_mw_cm2": self.photochemical_mw_cm2, "thermal_mw_cm2": self.thermal_mw_cm2,
                "visit_exposure_mj_cm2": self.visit_exposure_mj_cm2, "basis": self.basis}


@dataclass(frozen=True)
class LedResponse:
    """The irradiance at the pupil (mW/cm2) the white ring gives at each commanded level: measured points,
    joined by straight lines, 0 at level 0, and beyond the last point along the last segment's slope."""

    levels: tuple[float, ...]
    irradiance_mw_cm2: tuple[float, ...]
    source: str = "datasheet"

    def __post_init__(self) -> None:
        if len(self.levels) != len(self.irradiance_mw_cm2) or not self.levels:
            raise ValueError("an LED response needs as many irradiances as levels, and at least one")
        if any(b <= a for a, b in zip(self.levels, self.levels[1:])) or self.levels[0] <= 0:
            raise ValueError(f"an LED response's levels must rise above 0, not {self.levels}")
        if any(b <= a for a, b in zip((0.0, *self.irradiance_mw_cm2), self.irradiance_mw_cm2)):
            raise ValueError("an LED response's irradiance must rise with the level")

    @classmethod
    def nominal(cls, full_mw_cm2: float = NOMINAL_FULL_MW_CM2) -> "LedResponse":
        """The datasheet's figure at full level, taken as linear in the level (an uncalibrated module)."""
        return cls((1.0,), (float(full_mw_cm2),), source=f"datasheet: {full_mw_cm2:g} mW/cm2 at full level, linear")

    def irradiance(self, level: float) -> float:
        level = float(level)
        if level <= 0:
            return 0.0
        xs, ys = (0.0, *self.levels), (0.0, *self.irradiance_mw_cm2)
        i = min(max(bisect.bisect_left(xs, level), 1), len(xs) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return float(y0 + (y1 - y0) * (level - x0) / (x1 - x0))

    def level_for(self, irradiance: float) -> float:
        """The highest level whose irradiance stays at or under `irradiance` (the inverse of `irradiance`)."""
        xs, ys = (0.0, *self.levels), (0.0, *self.irradiance_mw_cm2)
        if irradiance <= 0:
            return 0.0
        i = min(max(bisect.bisect_left(ys, irradiance), 1), len(ys) - 1)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return float(x0 + (x1 - x0) * (irradiance - y0) / (y1 - y0))

    def to_dict(self) -> dict:
        return {"levels": list(self.levels), "irradiance_mw_cm2": list(self.irradiance_mw_cm2), "source": self.source}


@dataclass
class EyeDose:
    """The light one eye got in one visit: the preview's continuous light and the flashes, each as time and
    radiant exposure, and the highest irradiance it saw."""

    preview_s: float = 0.0
    preview_mj_cm2: float = 0.0
    flash_s: float = 0.0
    flash_mj_cm2: float = 0.0
    flashes: int = 0
    peak_irradiance_mw_cm2: float = 0.0

    @property
    def total_mj_cm2(self) -> float:
        return self.preview_mj_cm2 + self.flash_mj_cm2

    def add(self, kind: str, irradiance_mw_cm2: float, seconds: float) -> None:
        if seconds <= 0:
            return
        if kind == "flash":
            self.flash_s += seconds
            self.flash_mj_cm2 += irradiance_mw_cm2 * seconds
        else:
            self.preview_s += seconds
            self.preview_mj_cm2 += irradiance_mw_cm2 * seconds
        self.peak_irradiance_mw_cm2 = max(self.peak_irradiance_mw_cm2, irradiance_mw_cm2)

    def copy(self) -> "EyeDose":
        return EyeDose(**{k: getattr(self, k) for k in self.__dataclass_fields__})

    def to_dict(self) -> dict:
        """The figures as the visit log, the capture report and the structured report carry them."""
        def mean(mj: float, s: float) -> float:
            return round(mj / s, 6) if s > 0 else 0.0

        return {"preview": {"seconds": round(self.preview_s, 3), "radiant_exposure_mj_cm2": round(self.preview_mj_cm2, 6),
                            "mean_irradiance_mw_cm2": mean(self.preview_mj_cm2, self.preview_s)},
                "flash": {"count": self.flashes, "seconds": round(self.flash_s, 3),
                          "radiant_exposure_mj_cm2": round(self.flash_mj_cm2, 6),
                          "mean_irradiance_mw_cm2": mean(self.flash_mj_cm2, self.flash_s)},
                "radiant_exposure_mj_cm2": round(self.total_mj_cm2, 6),
                "peak_irradiance_mw_cm2": round(self.peak_irradiance_mw_cm2, 6)}

    @classmethod
    def from_dict(cls, data: dict) -> "EyeDose":
        """Back from `to_dict` (the visit log's record of an eye a restarted unit goes on lighting)."""
        preview, flash = data.get("preview", {}), data.get("flash", {})
        return cls(preview_s=float(preview.get("seconds", 0.0)),
                   preview_mj_cm2=float(preview.get("radiant_exposure_mj_cm2", 0.0)),
                   flash_s=float(flash.get("seconds", 0.0)), flash_mj_cm2=float(flash.get("radiant_exposure_mj_cm2", 0.0)),
                   flashes=int(flash.get("count", 0)), peak_irradiance_mw_cm2=float(data.get("peak_irradiance_mw_cm2", 0.0)))


class DoseLedger:
    """The light delivered, per exposure key (an eye of a visit; None: nobody's, the ring lit between
    captures), integrated over time at the irradiance of the level the ring was at. Thread-safe.

    The caller says when the light changes (`change`); the time at the old level is booked then, so the
    ledger is exact whatever the frame rate, and a flash is booked as a flash."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._eyes: dict[str, EyeDose] = {}
        self._unattributed = EyeDose()
        self._key: str | None = None
        self._irradiance = 0.0
        self._kind = "preview"
        self._since: float | None = None
        self._lock = threading.RLock()

    @property
    def key(self) -> str | None:
        return self._key

    def _entry(self, key: str | None) -> EyeDose:
        return self._eyes.setdefault(key, EyeDose()) if key is not None else self._unattributed

    def _book(self, now: float) -> None:
        if self._since is not None and self._irradiance > 0:
            self._entry(self._key).add(self._kind, self._irradiance, now - self._since)
        self._since = now

    def change(self, irradiance_mw_cm2: float, kind: str = "preview") -> None:
        """The ring is at this irradiance from now on (a flash when `kind` is "flash")."""
        with self._lock:
            self._book(self.clock())
            if kind == "flash" and irradiance_mw_cm2 > 0:
                self._entry(self._key).flashes += 1
            self._irradiance, self._kind = float(irradiance_mw_cm2), kind

    def switch(self, key: str | None, prior: EyeDose | None = None) -> None:
        """The light goes to another eye from now on. `prior`: what that eye already got (a unit restarted
        during its visit reads it back from the visit log), kept where the ledger knows less."""
        with self._lock:
            self._book(self.clock())
            self._key = key
            if key is not None and prior is not None:
                known = self._eyes.get(key)
                if known is None or known.total_mj_cm2 < prior.total_mj_cm2:
                    self._eyes[key] = prior.copy()

    def dose(self) -> EyeDose:
        """What the eye lit now has had so far, the time at the present level included."""
        with self._lock:
            return self.dose_of(self._key)

    def dose_of(self, key: str | None) -> EyeDose:
        """What one eye has had so far (None: the light that went to nobody's eye)."""
        with self._lock:
            self._book(self.clock())
            found = self._eyes.get(key) if key is not None else self._unattributed
            return found.copy() if found is not None else EyeDose()

    @property
    def irradiance_now(self) -> float:
        with self._lock:
            return self._irradiance
