"""The `glaucoscreen` command: one entry point for the unit and for the people who look after it."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from device.config import Config


def _pipeline(args, models=None, disc_classifier: bool | None = None):
    """The screening with the shipped models (the lab's measures), or with `models`' active ones (a ModelStore)."""
    from device.screening.pipeline import ScreeningPipeline

    return ScreeningPipeline.from_artifacts(precision=getattr(args, "precision", None) or "auto",
                                            artifacts=None if models is None else models.active_dir(),
                                            disc_classifier=disc_classifier)


def _installed_models(cfg: Config):
    from device.visits.datadir import DataDir
    from models.runtime.installed import ModelStore

    return ModelStore(DataDir(cfg.data_dir).models)


def cmd_screen(args) -> int:
    from device.screening.pipeline import screen_file

    if args.record and not (args.patient and args.eye):
        print("glaucoscreen screen: --record needs --patient ID and --eye right|left", file=sys.stderr)
        return 2
    cfg = Config.load(args.config, data_dir=args.data_dir)  # the bound on a photo's size; where the visit log is
    models = _installed_models(cfg)  # the unit's active models, as the kiosk screens with them
    pipeline = _pipeline(args, models)
    pipeline.model_versions["models_release"] = models.active_version()
    visits = visit_uuid = progression = history = None
    if args.record:
        from device.screening.progression import ProgressionAssessor
        from device.visits.recording import eye_history, record_eye
        from device.visits.visitlog import VisitLog

        progression = ProgressionAssessor.from_artifacts(artifacts=models.active_dir())
        visits = VisitLog(cfg.data_dir)
        if visits.get_patient(args.patient) is None:
            visits.add_patient(args.patient)
        history = eye_history(visits, args.patient, args.eye)  # finished visits: this run's own stays out of it
    rows, failed = [], 0
    for image in args.images:
        row, photo, result = screen_file(pipeline, Path(image), history=history, progression=progression,
                                         max_pixels=cfg.max_photo_pixels)
        if not row["ok"] or not row["gradable"]:
            failed += 1
        if visits is not None and result is not None:
            assert photo is not None  # a result comes with its photo
            if visit_uuid is None:
                visit_uuid = visits.start_visit(args.patient, operator="cli", device_id=cfg.device_id)
            row["visit"] = visit_uuid
            # the photo as read once and screened (never the file again): its own JPEG where that shows it exactly
            row.update(record_eye(visits, visit_uuid, args.eye, photo.rgb, result, original=photo.original, source="file"))
        rows.append(row)
        print(json.dumps(row), flush=True)
    if visits is not None:
        if visit_uuid is not None:
            visits.finalize_visit(visit_uuid)
        visits.close()
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=1) + "\n")
    return 1 if failed else 0


def cmd_evaluate(args) -> int:
    from device.lab import evaluate

    bootstrap = {k: v for k, v in (("resamples", args.resamples), ("seed", args.seed)) if v is not None}
    camera = (evaluate.SimulatedCamera.from_file(args.simulate_camera, args.camera_seed)
              if args.simulate_camera else None)
    report = evaluate.run([Path(d) for d in args.data], _pipeline(args), split=args.split, json_out=args.json_out,
                          roc_png=args.roc_png, camera=camera, **bootstrap)
    summary = report["summary"]
    print(json.dumps(summary, indent=1))
    # the tables are for people, the JSON on stdout for programs: the tables go to stderr beside the progress
    tables = evaluate.markdown(summary)
    print("\n" + tables, file=sys.stderr)
    if args.markdown_out:
        Path(args.markdown_out).write_text(tables)
    if args.roc_png and summary.get("roc_png") is None:
        print("glaucoscreen evaluate: no ROC curve drawn: these photos lack glaucoma or normal labels", file=sys.stderr)
    return 0


def cmd_fit_referral(args) -> int:
    from device.lab import fit_referral

    # every opinion is read, the ones the new rule leaves out too: the report compares them
    figures = fit_referral.fit(_pipeline(args, disc_classifier=True), [Path(d) for d in args.data], args.specificity,
                              opinions=tuple(args.opinions.split(",")), elsewhere=[Path(d) for d in args.other_cameras])
    print(json.dumps(figures, indent=1))
    return 0


def cmd_fit_progression(args) -> int:
    from device.lab import fit_progression
    from device.screening.pipeline import ScreeningPipeline
    from device.screening.progression import ProgressionAssessor

    grape = Path(args.grape)
    if not (grape / "eyes.csv").is_file() or not (grape / "visits.csv").is_file():
        print(f"glaucoscreen fit-progression: {grape} is not a GRAPE folder (it needs eyes.csv, visits.csv and rois/)",
              file=sys.stderr)
        return 2
    report = fit_progression.fit(ScreeningPipeline.from_artifacts(precision="fp32"), ProgressionAssessor.from_artifacts(),
                                 grape, args.specificity, out=args.policy_out, simulated_eyes=args.simulated_eyes)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("eyes", "rows")}, indent=1))
    return 0


def cmd_train(args) -> int:
    """One trainer per kind of network, chosen by the config's "network"."""
    config = json.loads(Path(args.config).read_text())
    extra = ["--data", str(args.data)] if args.data else []
    extra += ["--out", str(args.out)] if args.out else []
    if config.get("network") == "progression":
        from models import progression_net as progression

        progression.main(["train", "--config", str(args.config), *extra])
    else:
        from models import train

        train.main(["--config", str(args.config), *extra, *(["--resume"] if args.resume else [])])
    return 0


def cmd_compare(args) -> int:
    from models import compare

    out = args.out or compare.REPO / "runs" / "compare"
    data = ["--data", str(args.data)] if args.data else []
    compare.main(["train", "--config", str(args.config), "--out", str(out), "--jobs", str(args.jobs), *data])
    compare.main(["evaluate", "--runs", str(out), *data, "--json-out", str(out / "comparison.json"),
                  "--markdown-out", str(out / "comparison.md")])
    return 0


def cmd_doctor(args) -> int:
    from device import doctor

    cfg = Config.load(args.config, data_dir=args.data_dir, simulate=args.simulate or None)
    rep = doctor.report(cfg)
    print(json.dumps(rep, indent=1) if args.json else doctor.as_text(rep))
    return 0 if rep["ok"] else 1


def cmd_run(args) -> int:
    from device import kiosk

    cfg = Config.load(args.config, data_dir=args.data_dir, simulate=args.simulate or None)
    if args.port:
        cfg.kiosk.port = args.port
    if args.host:
        cfg.kiosk.host = args.host
    return kiosk.serve(cfg)


def cmd_reading_centre(args) -> int:
    from device import reading_centre
    from device.outbox.sync import SyncConfigError

    cfg = Config.load(args.config, data_dir=args.data_dir)
    try:
        return reading_centre.serve(cfg, host=args.host or "127.0.0.1", port=args.port or reading_centre.DEFAULT_PORT)
    except SyncConfigError as exc:
        print(f"glaucoscreen reading-centre: {exc}", file=sys.stderr)
        return 2


def cmd_bench(args) -> int:
    from device.lab import bench

    report = bench.run(runs=args.runs, photo=args.photo, threads=args.threads, json_out=args.json_out,
                       reference=not args.no_reference, profile=args.profile, measure_memory=not args.no_memory)
    print(json.dumps(report, indent=1))
    print("\n" + bench.summary(report), file=sys.stderr)  # for people; the JSON on stdout is for programs
    return 0


def cmd_capture(args) -> int:
    """One capture on the optic module; writes the photo (corrected with the module's calibration, where the data
    folder has one for it, and the still as the camera gave it beside) and a report of how the loop got there:
    frames, rejections, light and focus, the calibration used and the light the eye got against its limits."""
    from device.capture import calibration as optics
    from device.capture.loop import CaptureLoop
    from device.screening.quality import QualityGate
    from hardware.rig import open_rig
    from models.runtime.images import encode_jpeg

    cfg = Config.load(args.config, data_dir=args.data_dir, simulate=args.simulate or None)
    args.out.mkdir(parents=True, exist_ok=True)
    options, start = {}, None
    if cfg.simulate:
        options = {"seed": args.seed, "eye_seed": args.seed, "laterality": args.eye}
        if args.hard_start:  # the campaign's start: disc off-centre, out of focus and under-lit
            from device.lab.capture_trials import hard_start

            start = hard_start(args.seed)
            options = {**start.camera_options(), "laterality": args.eye}
    with open_rig(**cfg.rig_options(), **options) as rig:
        if start is not None:
            start.apply(rig)
        calibration = optics.put_to_work(cfg, rig)
        loop = CaptureLoop(rig.camera, QualityGate(cfg.quality), cfg.capture, illumination=rig.illumination,
                           optic_module=rig.optic_module, correction=calibration.correction)
        loop.start()
        try:
            loop.begin(args.eye)
            photo = loop.wait_photo(args.timeout)
            state = loop.state()
            trace = photo.trace if photo else loop.trace()
            dose = loop.light_dose()
        finally:
            loop.stop()
    report = {"eye": args.eye, "captured": photo is not None, "error": state["error"], **trace,
              "calibration": calibration.summary(), "calibration_warnings": calibration.warnings, "light_dose": dose,
              "light_stopped": state["light_stopped"]}
    if photo is not None:
        name = f"{args.eye}.jpg"
        (args.out / name).write_bytes(encode_jpeg(photo.rgb, quality=95))
        report.update(photo=name, width=photo.rgb.shape[1], height=photo.rgb.shape[0], quality=photo.quality.to_dict())
        if photo.raw is not None:  # the still before the calibration's correction, kept as the unit keeps it
            (args.out / f"{args.eye}-raw.jpg").write_bytes(encode_jpeg(photo.raw, quality=95))
            report["raw_photo"] = f"{args.eye}-raw.jpg"
    (args.out / "capture.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("eye", "captured", "error", "frames", "rejected", "seconds_to_capture") if k in report}))
    if state["light_stopped"]:
        print(f"glaucoscreen capture: {state['light_stopped']}; the lights are off", file=sys.stderr)
    for warning in calibration.warnings:
        print(f"glaucoscreen capture: {warning}", file=sys.stderr)
    return 0 if photo is not None else 1


def cmd_calibrate(args) -> int:
    """Calibrate the optic module: the grey calibration target against its front lens (in simulation, a simulated
    one, and the simulated model eye's light meter); writes <data dir>/calibration.json and its flat-field map."""
    from calibration.measure import CalibrationRefused
    from device.capture import calibration as optics
    from hardware.rig import open_rig

    if args.light_meter is not None and not (math.isfinite(args.light_meter) and args.light_meter > 0):
        print(f"glaucoscreen calibrate: --light-meter is the meter's reading in mW/cm2, a positive number, not "
              f"{args.light_meter:g}", file=sys.stderr)
        return 2
    cfg = Config.load(args.config, data_dir=args.data_dir, simulate=args.simulate or None)
    unpaced: dict = {"fps": None} if cfg.simulate else {}  # a simulated camera need not wait for the wall clock
    with open_rig(**cfg.rig_options(), **unpaced) as rig:
        meter = None
        if args.light_meter is not None:
            reading = float(args.light_meter)
            meter = lambda _level: reading  # noqa: E731 - the person's reading with the ring at the light limit
        if rig.simulated and hasattr(rig.camera, "present_target"):
            rig.camera.present_target()
            meter = meter or rig.light_meter
        try:
            optics.run(cfg, rig, light_meter=meter)
        except CalibrationRefused as exc:
            print(f"glaucoscreen calibrate: refused, nothing saved: {exc}", file=sys.stderr)
            return 1
    path = optics.calibration_file(cfg)
    figures = json.loads(path.read_text())
    print(json.dumps({"file": str(path), **{k: figures[k] for k in ("version", "date", "module_serial", "sensor_gamma",
                                                                   "dark_level", "white_balance", "flat_field",
                                                                   "led_response", "checks")}}, indent=1))
    return 0


def cmd_sync(args) -> int:
    from device.outbox.sync import SyncConfigError, run_sync

    cfg = Config.load(args.config, data_dir=args.data_dir)
    try:
        report = run_sync(cfg, once=args.once, target=args.target)
    except SyncConfigError as exc:
        print(f"glaucoscreen sync: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    if report["attempted"] and not report["sent"]:
        # a script or timer must see that results are stuck: nothing went, though something was due
        print(f"glaucoscreen sync: nothing could be sent ({report['attempted']} tried); the last error is in the "
              "sending page and the log", file=sys.stderr)
        return 1
    return 0


def cmd_export(args) -> int:
    import datetime as dt

    from device.outbox import health
    from device.outbox.usb import ExportError, export
    from device.visits.visitlog import VisitLog

    cfg = Config.load(args.config, data_dir=args.data_dir)
    def day(text):
        return dt.date.fromisoformat(text) if text else None

    with VisitLog(cfg.data_dir) as visits:
        try:
            report = export(visits, args.out, visit_uuid=args.visit, since=day(args.since), until=day(args.until),
                            device_id=cfg.device_id, refer_within_days=cfg.clinic.refer_within_days,
                            health=health.report(cfg, visits))
        except (ExportError, ValueError, LookupError) as exc:
            print(f"glaucoscreen export: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(report, default=str))
    return 0


def cmd_quantize(args) -> int:
    from calibration.quantize import quantize_model

    print(json.dumps(quantize_model(args.model, [Path(d) for d in args.data], args.method, target=args.target), indent=1))
    return 0


def cmd_gate(args) -> int:
    from device.lab import accuracy_gate

    verdict = accuracy_gate.run(args.model, [Path(d) for d in args.data], split=args.split)
    print(json.dumps(verdict, indent=1))
    return 0 if verdict["passed"] else 1


def cmd_build_engines(args) -> int:
    """Build (or find cached) TensorRT engines for every shipped model and precision, on the Jetson. One that
    fails does not stop the others (the unit runs without it and says so); the exit status is 1 if any did.
    The installer runs this before it starts the kiosk; a kiosk starting meanwhile waits on the same lock."""
    from device.visits.datadir import DataDir
    from models.runtime import registry
    from models.runtime import tensorrt as trt_runtime
    from models.runtime.engine import EngineError, close_engine
    from models.runtime.installed import active_artifacts

    cfg = Config.load(args.config, data_dir=args.data_dir)
    try:
        trt_runtime.check_installed()
        artifacts = active_artifacts(DataDir(cfg.data_dir).models)  # the active models, as the kiosk loads them
        entries = registry.manifest(artifacts)
    except EngineError as exc:
        print(f"glaucoscreen build-engines: {exc}", file=sys.stderr)
        return 1
    built, failed = {}, {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or "file" not in entry:
            continue
        for precision in ["fp32"] + (["int8"] if "int8" in entry else []):
            try:
                engine = registry.load_engine(name, precision, artifacts, backend="tensorrt",
                                              engine_cache=DataDir(cfg.data_dir).engines)
            except EngineError as exc:
                failed[f"{name}.{precision}"] = str(exc)
                print(f"glaucoscreen build-engines: {name} ({precision}): {exc}", file=sys.stderr)
                continue
            built[f"{name}.{precision}"] = str(getattr(engine, "engine_file", ""))
            close_engine(engine)  # one engine's GPU memory at a time
    print(json.dumps({"built": built, "failed": failed}, indent=1))
    return 1 if failed else 0


def cmd_models(args) -> int:
    """`models pack|install|rollback|list`: signed model updates (device.screening.model_update)."""
    from device.screening import model_update
    from models.runtime.bundle import BundleError
    from models.runtime.engine import EngineError

    where = f"glaucoscreen models {args.models_command}"
    try:
        if args.models_command == "pack":
            print(json.dumps(model_update.pack(args.out, args.key, source=args.source, version=args.version,
                                               check_photos=args.check_photos), indent=1))
            return 0
        cfg = Config.load(args.config, data_dir=args.data_dir)
        if args.models_command == "install":
            print(f"{where}: checking {args.bundle} (signature, hashes, the check photos' screening)...", file=sys.stderr)
            report = model_update.install(cfg, args.bundle, allow_downgrade=args.allow_downgrade)
            print(json.dumps(report, indent=1))
            print(f"{where}: version {report['installed']} is active (was {report['previous']}); a running kiosk "
                  "loads it before its next screening", file=sys.stderr)
        elif args.models_command == "rollback":
            report = model_update.rollback(cfg)
            print(json.dumps(report, indent=1))
            print(f"{where}: version {report['version']} is active again (was {report['previous']})", file=sys.stderr)
        else:
            versions = model_update.listing(cfg)
            print(json.dumps(versions, indent=1) if args.json else _versions_text(versions))
    except (model_update.UpdateRefused, BundleError, EngineError) as exc:
        print(f"{where}: {exc}", file=sys.stderr)
        return 1
    return 0


def _versions_text(versions: list[dict]) -> str:
    lines = []
    for v in versions:
        mark = "*" if v["active"] else " "
        origin = "shipped with the software" if v["shipped"] else f"signed by {v.get('signed_by')}, installed {v.get('installed_at')}"
        state = "" if v.get("verified") else "  FILES DO NOT MATCH THEIR HASHES"
        left = "; taken out of use by a rollback" if v.get("rolled_back") else ""
        lines.append(f"{mark} {v['version']:<10} {origin}{state}{left}")
    return "\n".join(lines + ["(* active)"])


def cmd_health(args) -> int:
    from device.outbox import health

    cfg = Config.load(args.config, data_dir=args.data_dir)
    report = health.report(cfg)
    print(json.dumps(report, indent=1, default=str) if args.json else health.as_text(report))
    return 0 if report["models"].get("ok") else 1


DATA_DIR_HELP = "the unit's data folder: visit log, images, accounts (default: from the configuration)"


def options_anywhere(parser: argparse.ArgumentParser) -> None:
    """`glaucoscreen --data-dir D user list` and `glaucoscreen user list --data-dir D` mean the same: an IT person
    types an option where they think of it. Every subcommand, at every level, takes --data-dir and the unit's
    --config, and a subcommand's own copy never overwrites a value given earlier on the line (SUPPRESS).
    `train` and `compare` keep their own --config (a training config), which the unit's does not reach."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sub in action.choices.values():
            present = {option for a in sub._actions for option in a.option_strings}
            if "--data-dir" not in present:
                sub.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help=DATA_DIR_HELP)
            if "--config" not in present:
                sub.add_argument("--config", type=Path, default=argparse.SUPPRESS,
                                 help="the unit's TOML configuration (default /etc/glaucoscreen/glaucoscreen.toml)")
            for a in sub._actions:
                if a.dest == "data_dir" or (a.dest == "config" and "--config" not in present):
                    a.default = argparse.SUPPRESS
            options_anywhere(sub)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glaucoscreen", description="GlaucoScreen Edge: glaucoma screening unit")
    p.add_argument("--config", type=Path, default=None, help="TOML config file (default /etc/glaucoscreen/glaucoscreen.toml)")
    p.add_argument("--data-dir", type=Path, default=None, help=DATA_DIR_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("screen", help="screen fundus photos and print one JSON object per photo")
    s.add_argument("images", nargs="+", help="fundus photos (JPEG or PNG files)")
    s.add_argument("--json-out", type=Path, help="also write the results as one JSON list to this file")
    s.add_argument("--precision", choices=["auto", "fp32", "int8"], default="auto",
                   help="the segmentation engine: auto picks INT8 where the accuracy gate allows and it is faster here")
    s.add_argument("--record", action="store_true", help="also store each screening as a visit in the visit log")
    s.add_argument("--patient", help="with --record: the patient's clinic number (registered if new)")
    s.add_argument("--eye", choices=["right", "left"], help="with --record: which eye the photo is of")
    s.add_argument("--data-dir", type=Path, help="the unit's data folder: visit log, images, accounts (default: from the configuration)")
    s.set_defaults(func=cmd_screen)

    e = sub.add_parser("evaluate", help="measure the screening on a folder of annotated photos")
    e.add_argument("--data", action="append", required=True, help="dataset folder (repeatable)")
    e.add_argument("--split", help="train/val/test (the project's own split) or the source's split name")
    e.add_argument("--json-out", type=Path, help="write the summary and every photo's row as JSON")
    e.add_argument("--roc-png", type=Path, help="draw the ROC curve with the referral operating point as PNG")
    e.add_argument("--markdown-out", type=Path, help="also write the per-source tables as Markdown")
    e.add_argument("--resamples", type=int, help="bootstrap resamples for the 95%% intervals (default: evaluate.RESAMPLES)")
    e.add_argument("--seed", type=int, help="bootstrap seed (the same seed gives the same intervals; default: evaluate.SEED)")
    e.add_argument("--simulate-camera", type=Path, metavar="CONFIG",
                   help="show every photo as another camera would (the camera section of a training config, "
                        "e.g. models/configs/classifier_cameras.json): figures of a simulation, labelled so")
    e.add_argument("--camera-seed", type=int, default=0, help="seed of the simulated camera's draws (default 0)")
    e.add_argument("--precision", choices=["auto", "fp32", "int8"], default="auto",
                   help="the segmentation engine measured (auto: what the unit would run here)")
    e.set_defaults(func=cmd_evaluate)

    f = sub.add_parser("fit-referral", help="fit the vCDR regression and referral threshold on the val split")
    f.add_argument("--data", action="append", required=True, help="a dataset folder with labels.csv (repeat for several)")
    f.add_argument("--specificity", type=float, default=0.9, help="the specificity on val the threshold is set for")
    f.add_argument("--opinions", default="vcdr,segmentation,disc_classifier",
                   help="the opinions the probability averages, comma-separated (vcdr, segmentation, disc_classifier)")
    f.add_argument("--other-cameras", action="append", default=[], metavar="DATA",
                   help="unlabelled photos of other cameras: report how many of them each opinion would refer")
    f.add_argument("--precision", choices=["auto", "fp32", "int8"], default="fp32",
                   help="fit on the reference FP32 outputs (default) so the policy holds for either build")
    f.set_defaults(func=cmd_fit_referral)

    fp = sub.add_parser("fit-progression", help="measure GRAPE's eyes in registered frames, fit the progression decision, "
                        "measure it on test patients and by 5-fold cross-validation")
    fp.add_argument("--grape", type=Path, required=True, help="GRAPE folder (eyes.csv, visits.csv, rois/)")
    fp.add_argument("--specificity", type=float, default=0.8, help="the specificity on val the progression call is set for")
    fp.add_argument("--json-out", type=Path, help="also write the figures to this JSON file")
    fp.add_argument("--policy-out", type=Path, default=None,
                    help="where the fitted policy goes (default: the shipped models/artifacts/progression.json)")
    fp.add_argument("--simulated-eyes", type=int, default=8,
                    help="simulated eyes photographed repeatedly for the vCDR's repeatability (0: none)")
    fp.set_defaults(func=cmd_fit_progression)

    t = sub.add_parser("train", help="train a network from a JSON config (needs the 'train' extra: torch)")
    t.add_argument("--config", type=Path, required=True, help="e.g. models/configs/compare.json")
    t.add_argument("--data", type=Path, help="folder holding the dataset folders (default: ../shared/data)")
    t.add_argument("--out", type=Path, help="run folder (default: runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="go on from the run folder's last checkpoint")
    t.set_defaults(func=cmd_train)

    cm = sub.add_parser("compare", help="train STL, MTL and MTL-IO on one split and print the comparison table")
    cm.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "models" / "configs" / "compare.json",
                    help="the comparison's training config (JSON; default models/configs/compare.json)")
    cm.add_argument("--data", type=Path, help="folder holding the dataset folders (default: ../shared/data)")
    cm.add_argument("--out", type=Path, help="folder for the three runs and the table")
    cm.add_argument("--jobs", type=int, default=1, help="runs trained at once (each takes the cores it is given)")
    cm.set_defaults(func=cmd_compare)

    d = sub.add_parser("doctor", help="check the unit's hardware, models and storage")
    d.add_argument("--json", action="store_true", help="print the checks as JSON instead of text")
    d.add_argument("--simulate", action="store_true", help="check the simulated optic module, camera and GPIO")
    d.add_argument("--data-dir", type=Path, help="the unit's data folder: visit log, images, accounts (default: from the configuration)")
    d.set_defaults(func=cmd_doctor)

    c = sub.add_parser("capture", help="run one capture on the optic module and write the photo and a report")
    c.add_argument("--simulate", action="store_true", help="use the simulated optic module, camera and GPIO")
    c.add_argument("--eye", choices=["right", "left"], required=True, help="the eye in front of the module")
    c.add_argument("--out", type=Path, required=True, help="folder for the photo and its JSON report")
    c.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a gradable photo")
    c.add_argument("--seed", type=int, default=0, help="simulated eye and start pose")
    c.add_argument("--hard-start", action="store_true", help="simulation: start off-centre and under-lit")
    c.set_defaults(func=cmd_capture)

    cb = sub.add_parser("calibrate", help="calibrate the optic module on its grey target: flat field, white balance, LED "
                        "response, dark level (saved in the data folder as the one the unit uses)")
    cb.add_argument("--simulate", action="store_true", help="the simulated optic module, with a simulated target and model eye")
    cb.add_argument("--light-meter", type=float, metavar="MW_CM2",
                    help="the model eye's light meter reading at the pupil with the ring at the light limit (max_led_level), "
                         "in mW/cm2; without it the datasheet's figure ([light_safety] datasheet_mw_cm2) scales the dose")
    cb.set_defaults(func=cmd_calibrate)

    y = sub.add_parser("sync", help="send finished visits to the central PACS (DICOMweb STOW-RS)")
    y.add_argument("--once", action="store_true", help="one pass over the outbox, then exit (the systemd timer's way)")
    y.add_argument("--target", help="DICOMweb URL for this run instead of [sync] url")
    y.add_argument("--data-dir", type=Path, help="the unit's data folder: visit log, images, accounts (default: from the configuration)")
    y.set_defaults(func=cmd_sync)

    x = sub.add_parser("export", help="write visits as DICOM files + CSV to a folder (a USB stick)")
    x.add_argument("out", type=Path, help="the folder to write to (the USB stick's mount point or a folder on it)")
    x.add_argument("--visit", help="one visit's UUID")
    x.add_argument("--since", help="first day, YYYY-MM-DD")
    x.add_argument("--until", help="last day, YYYY-MM-DD")
    x.add_argument("--data-dir", type=Path, help="the unit's data folder: visit log, images, accounts (default: from the configuration)")
    x.set_defaults(func=cmd_export)

    q = sub.add_parser("quantize", help="build the calibrated INT8 QDQ model from the FP32 one")
    q.add_argument("--data", action="append", required=True, help="dataset folders holding the calibration photos")
    q.add_argument("--model", default="segmentation", help="the shipped model to quantize, by its manifest name")
    q.add_argument("--method", choices=["minmax", "percentile", "entropy"], default="minmax",
                   help="how activation ranges are calibrated")
    q.add_argument("--target", choices=["tensorrt", "cpu"], default="tensorrt",
                   help="tensorrt: the symmetric build both runtimes accept (int8); cpu: ONNX Runtime's faster build (int8_cpu)")
    q.set_defaults(func=cmd_quantize)

    g = sub.add_parser("gate", help="FP32 vs INT8 on held-out photos; decides which precision the unit uses")
    g.add_argument("--data", action="append", required=True, help="a dataset folder with labels.csv (repeat for several)")
    g.add_argument("--model", default="segmentation", help="the shipped model whose INT8 build is judged")
    g.add_argument("--split", default="val", help="the photos judged on (the project's val split by default)")
    g.set_defaults(func=cmd_gate)

    e2 = sub.add_parser("build-engines", help="build the TensorRT engines on a Jetson (cached by model, TensorRT, GPU, precision)")
    e2.add_argument("--data-dir", type=Path, help="the unit's data folder: visit log, images, accounts (default: from the configuration)")
    e2.set_defaults(func=cmd_build_engines)

    b = sub.add_parser("bench", help="latency of each engine and the whole screening, FP32 vs INT8, vs the paper's U-Net")
    b.add_argument("--runs", type=int, default=30, help="timed runs per figure (after warm-up)")
    b.add_argument("--photo", default="synthetic", help="a photo file, or 'synthetic' for a 2048x1536 synthetic photo")
    b.add_argument("--threads", type=int, help="CPU threads for ONNX Runtime (default: the board's setting)")
    b.add_argument("--no-reference", action="store_true", help="skip the reference U-Net (needs torch)")
    b.add_argument("--json-out", type=Path, help="also write the figures to this JSON file")
    b.add_argument("--profile", action="store_true",
                   help="also time each step of one screening (decode, gate, each pass, clean, measure, classifier, fusion, unwarp)")
    b.add_argument("--no-memory", action="store_true",
                   help="skip the peak memory of `screen` on a 12 MP photo and of the simulated unit through a visit")
    b.set_defaults(func=cmd_bench)

    m = sub.add_parser("models", help="signed model updates: pack a release, install it, roll back, list the versions")
    ms = m.add_subparsers(dest="models_command", required=True)
    mp = ms.add_parser("pack", help="pack models into a bundle signed with an Ed25519 key, with check photos")
    mp.add_argument("--out", type=Path, required=True, help="the bundle file to write (e.g. glaucoscreen-models-1.2.0.tar)")
    mp.add_argument("--key", type=Path, required=True,
                    help="the release's Ed25519 private key, PEM (openssl genpkey -algorithm ed25519 -out KEY.pem)")
    mp.add_argument("--from", dest="source", type=Path, help="the models folder (default: the shipped models/artifacts)")
    mp.add_argument("--version", help="the release version, numbers with dots (default: the software's version)")
    mp.add_argument("--check-photos", type=int, default=4, help="synthetic check photos screened on the unit before it switches")
    mp.set_defaults(func=cmd_models)
    mi = ms.add_parser("install", help="check a bundle (signature, hashes, accuracy gate, smoke screening), then switch to it")
    mi.add_argument("bundle", type=Path, help="the bundle file (from a USB stick, or downloaded)")
    mi.add_argument("--allow-downgrade", action="store_true", help="install even a version older than the active one")
    mi.set_defaults(func=cmd_models)
    ms.add_parser("rollback", help="go back to the models active before the current ones").set_defaults(func=cmd_models)
    ml = ms.add_parser("list", help="the installed versions (the shipped models first), the active one marked")
    ml.add_argument("--json", action="store_true", help="as JSON, with every file's sha256")
    ml.set_defaults(func=cmd_models)

    h = sub.add_parser("health", help="the unit's health report: versions, disk, queue, last errors, uptime")
    h.add_argument("--json", action="store_true", help="as JSON (what each sync sends to [sync] health_url)")
    h.set_defaults(func=cmd_health)

    r = sub.add_parser("run", help="start the unit: capture loop and kiosk")
    r.add_argument("--simulate", action="store_true", help="simulated optic module, camera and GPIO")
    r.add_argument("--port", type=int, help="the kiosk's port (default: [kiosk] port, 8080)")
    r.add_argument("--host", help="the address the kiosk listens on (default: [kiosk] host, 127.0.0.1)")
    r.add_argument("--data-dir", type=Path, help="the unit's data folder: visit log, images, accounts (default: from the configuration)")
    r.set_defaults(func=cmd_run)

    rc = sub.add_parser("reading-centre", help="serve the reading centre's review app over the PACS that [sync] names")
    rc.add_argument("--port", type=int, help="the port (default 8090)")
    rc.add_argument("--host", help="the address it listens on (default 127.0.0.1)")
    rc.set_defaults(func=cmd_reading_centre)
    for name, _module, text in LAB_TRIALS:
        sub.add_parser(name, help=text + f" (`glaucoscreen {name} --help` for its options)", add_help=False)
    from device.accounts import add_user_parser

    add_user_parser(sub)
    options_anywhere(p)
    return p


# Lab trials and benchmarks with options of their own: `glaucoscreen NAME --help` shows them.
LAB_TRIALS = (
    ("capture-trials", "capture_trials", "seeded hard starts on the simulated optic module: share captured within 20 s"),
    ("bench-kiosk", "bench_kiosk", "a health worker's straight visit in headless Chromium: seconds per step"),
    ("bench-quality", "bench_quality", "the quality gate on annotated and other-camera photos: who is called ungradable"),
    ("bench-calibration", "bench_calibration", "simulated strongly vignetted, colour-cast optic modules with and without "
     "their calibration against the reference module: gate false rejections, disc/cup Dice"),
    ("trials", "trials", "`trials visits|sync --trials N`: power cuts of the visit log, sync faults against a real PACS"),
    ("retrain-progression", "retrain_progression", "the progression network retrained on GRAPE's registered visit pairs, "
     "measured by patient, shipped only where its validation interval lies above chance"),
)


def run_lab(name: str, argv: list[str]) -> int:
    """A lab tool's own command line, reached from here so the appliance's modules never import the lab."""
    import importlib

    module = dict((n, m) for n, m, _ in LAB_TRIALS)[name]
    return importlib.import_module(f"device.lab.{module}").main(argv) or 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in {name for name, _, _ in LAB_TRIALS}:
        return run_lab(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `glaucoscreen doctor | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
