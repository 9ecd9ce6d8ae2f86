"""New models over the network: the sync service asks [models] release_url for the newest release and, when it
is newer than the active models, downloads the bundle and installs it as `glaucoscreen models install` would.

The index is a small JSON object the programme publishes beside its bundles:

    {"version": "1.2.0", "url": "glaucoscreen-models-1.2.0.tar", "sha256": "..."}

`url` may be relative to the index's own address; `sha256` (of the bundle file) is optional and only spares
an install of a file damaged on its way: the bundle's signature is what the unit trusts. A bundle the unit
refused is not downloaded again at every run: it is remembered by version, address and sha256 until the
index names another. Every check is written to release-check.json in the installed-models folder, which
the health report carries, so a programme sees which units took a release and why others did not.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from urllib.parse import urljoin

from device.config import Config
from device.outbox.programme import ProgrammeClient, ProgrammeError
from device.visits.datadir import DataDir
from models.runtime import bundle as bundles
from models.runtime.durable import write_whole
from models.runtime.engine import EngineError

log = logging.getLogger(__name__)

RECORD = "release-check.json"
DOWNLOAD_PREFIX = "download-"


def check(config: Config, client: ProgrammeClient) -> dict:
    """Ask the release index once and install a newer release. Never raises for what the network or the
    bundle does: the outcome, in words, is returned and recorded."""
    root = DataDir(config.data_dir).models
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(DOWNLOAD_PREFIX + "*"):  # a download a power cut or a kill cut short
        leftover.unlink(missing_ok=True)
    record = _read(root)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    outcome: dict = {"checked_at": now, "url": config.models.release_url}
    try:
        outcome |= _check(config, client, root, record)
    except (ProgrammeError, bundles.BundleError, EngineError, OSError) as exc:  # the network's or the index's fault
        outcome |= {"outcome": "error", "error": str(exc)}
        log.warning("model release check at %s: %s", config.models.release_url, exc)
    refused = dict(record.get("refused", {}))
    if outcome.get("outcome") == "refused":
        refused[outcome["version"]] = {"url": outcome["bundle_url"], "sha256": outcome.get("sha256"), "why": outcome["error"]}
    write_whole(root / RECORD, (json.dumps(outcome | {"refused": refused}, indent=1) + "\n").encode("utf-8"))
    return outcome


def _check(config: Config, client: ProgrammeClient, root: Path, record: dict) -> dict:
    # here, not at the top: the sync service imports this module, and needs the screening only to install
    from device.screening import model_update

    index = client.get_json(config.models.release_url)
    version, where = index.get("version"), index.get("url")
    if not isinstance(version, str) or not isinstance(where, str) or not where:
        raise ProgrammeError(f"the release index at {config.models.release_url} names no version and url")
    bundles.parse_version(version)
    sha256 = index.get("sha256") if isinstance(index.get("sha256"), str) else None
    url = urljoin(config.models.release_url, where)
    active = model_update.store(config).active_version()
    found = {"newest": version, "active": active}
    if not bundles.is_newer(version, active):
        return found | {"outcome": "up to date"}
    before = record.get("refused", {}).get(version)
    if before and before.get("url") == url and before.get("sha256") == sha256:
        return found | {"outcome": "refused before", "error": before.get("why")}
    target = root / f"{DOWNLOAD_PREFIX}{version}.tar"
    try:
        client.download(url, target, sha256=sha256)
        log.info("model release %s downloaded from %s; installing", version, url)
        try:
            installed = model_update.install(config, target)
        except model_update.UpdateRefused as exc:
            log.error("model release %s refused: %s", version, exc)
            return found | {"outcome": "refused", "version": version, "bundle_url": url, "sha256": sha256, "error": str(exc)}
    finally:
        target.unlink(missing_ok=True)
    log.info("model release %s installed (was %s)", version, installed["previous"])
    return found | {"outcome": "installed", "active": installed["installed"], "previous": installed["previous"]}


def _read(root: Path) -> dict:
    try:
        data = json.loads((root / RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
