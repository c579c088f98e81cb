"""Whether a module's sizes are per device or global.

Optimized (SPMD-partitioned, scheduled) HLO holds per-device shapes. StableHLO and unoptimized
HLO of a sharded program hold global shapes with sharding annotations (``mhlo.sharding``,
``sdy.sharding``, HLO ``sharding={devices=[..]..}``); per-device sizes would need XLA's sharding
propagation for every unannotated value, which hloscope does not redo, so such a module's
sizes are labelled global (HloModule.sizes_are_global) rather than shown as per-device.
"""

from __future__ import annotations

import math
import re

from hloscope.hlo.model import HloModule

_NUM_PARTITIONS = re.compile(r"mhlo\.num_partitions\s*=\s*(\d+)")
_MESH = re.compile(r"sdy\.mesh\s+@[\w$.\-]+\s*=\s*<\s*\[([^\]]*)\]")
_AXIS = re.compile(r'=\s*(\d+)')
_TILED = re.compile(r"devices=\[([\d,\s]+)\]")


def _tiles(sharding: str) -> int:
    """Largest device count of the tiled shardings in an HLO sharding text (1 if none)."""
    most = 1
    for found in _TILED.finditer(sharding):
        most = max(most, math.prod(int(d) for d in found.group(1).split(",") if d.strip()))
    return most


def hlo_global_reason(module: HloModule) -> str | None:
    """The reason an HLO module's sizes are global, or None: unscheduled HLO (not partitioned
    yet) with a tiled ``sharding=`` on some instruction."""
    if module.is_scheduled:
        return None
    devices = 1
    for inst in module.instructions():
        sharding = inst.attributes.get("sharding")
        if sharding and "devices=" in sharding:
            devices = max(devices, _tiles(sharding))
    if devices <= 1:
        return None
    return (f"global sizes: unpartitioned HLO sharded over {devices} devices (sharding={{devices=...}}); "
            "compile it for per-device sizes")


def mlir_global_reason(text: str) -> str | None:
    """The reason a StableHLO text's sizes are global, or None: more than one partition
    (``mhlo.num_partitions``), a Shardy mesh of more than one device used by ``sdy.sharding``,
    or a tiled ``mhlo.sharding``."""
    devices = 1
    for found in _NUM_PARTITIONS.finditer(text):
        devices = max(devices, int(found.group(1)))
    if "sdy." in text:
        for found in _MESH.finditer(text):
            devices = max(devices, math.prod(int(a) for a in _AXIS.findall(found.group(1))) or 1)
    if "mhlo.sharding" in text:
        devices = max(devices, _tiles(text))
    if devices <= 1:
        return None
    how = "sdy.sharding" if "sdy.sharding" in text or "sdy.manual_computation" in text else "mhlo.sharding"
    return (f"global sizes: StableHLO holds whole-array shapes of a program sharded over {devices} devices "
            f"({how}); compile it for per-device sizes")
